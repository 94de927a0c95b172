"""Parameters of flows and tasks: binding, validation, JSON schema.

A run's parameters are a dict of parameter name to value, built by binding
the call's arguments to the function's signature with defaults applied. The
function is later called from that dict (:meth:`FnSignature.call_args`), so
positional-only and ``*args``/``**kwargs`` parameters keep working.

Flows validate and coerce their parameters against the type hints with
``msgspec.convert`` (lax mode, so ``"3"`` becomes ``3`` for an ``int`` and an
ISO string a ``date``, as values from a deployment's JSON would need), and
describe them with a JSON schema built from the same Struct. Hints msgspec
cannot check (or that do not resolve) count as ``Any``; instances of plain
classes are checked with ``isinstance``. Tasks bind but never validate.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from engine.exceptions import ParameterError

_P = inspect.Parameter
_PLAIN_KINDS = (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)
_encoder = msgspec.json.Encoder()


def _checkable(hint: Any) -> Any:
    """``hint`` if msgspec can check values against it, else ``Any``."""
    if hint is _P.empty or isinstance(hint, str):
        return Any
    try:
        msgspec.inspect.type_info(hint)
    except Exception:  # msgspec raises several types for hints it cannot use
        return Any
    return hint


def _resolve_one(fn: Callable[..., Any], name: str, annotation: Any) -> Any:
    """One parameter's hint, or ``Any`` when it does not resolve."""
    if annotation is _P.empty:
        return Any
    holder = types.SimpleNamespace(__annotations__={name: annotation})
    try:
        hints = typing.get_type_hints(
            holder, globalns=getattr(fn, "__globals__", None), include_extras=True
        )
    except Exception:  # a name that is not defined anywhere
        return Any
    return hints[name]


def _jsonable(value: Any) -> bool:
    try:
        _encoder.encode(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


class FnSignature:
    """What the engine needs to know about a user function's parameters."""

    def __init__(
        self,
        fn: Callable[..., Any],
        signature: inspect.Signature,
        hints: dict[str, Any],
        plain: bool,
    ) -> None:
        self.fn = fn
        self.signature = signature
        self.hints = hints
        #: True when every parameter can be passed by keyword (the fast call path).
        self.plain = plain
        self._validator: type[msgspec.Struct] | None = None
        self._validator_built = False

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> FnSignature:
        signature = inspect.signature(fn)
        try:
            resolved = typing.get_type_hints(fn, include_extras=True)
        except Exception:  # an unresolvable forward reference: resolve one by one
            resolved = {
                name: _resolve_one(fn, name, p.annotation)
                for name, p in signature.parameters.items()
            }
        hints = {
            name: _checkable(resolved.get(name, p.annotation))
            for name, p in signature.parameters.items()
        }
        plain = all(p.kind in _PLAIN_KINDS for p in signature.parameters.values())
        return cls(fn=fn, signature=signature, hints=hints, plain=plain)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Parameters by name, defaults applied. Raises ParameterError (a TypeError)."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            text = str(exc)
            name = _parameter_in(text)
            if name and text.startswith("missing"):
                text = f"missing required parameter {name!r}"
            raise ParameterError(text, details={"parameter": name} if name else None) from None
        bound.apply_defaults()
        return bound.arguments

    def call_args(self, params: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The ``(args, kwargs)`` that call the function with ``params``."""
        if self.plain:
            return (), params
        # Everything that may go by position does, in order: a parameter before
        # ``*args`` passed by keyword would clash with the positional ones.
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, p in self.signature.parameters.items():
            if name not in params:
                continue
            value = params[name]
            if p.kind is _P.POSITIONAL_ONLY or p.kind is _P.POSITIONAL_OR_KEYWORD:
                args.append(value)
            elif p.kind is _P.VAR_POSITIONAL:
                args.extend(value)
            elif p.kind is _P.VAR_KEYWORD:
                kwargs.update(value)
            else:
                kwargs[name] = value
        return tuple(args), kwargs

    # --- validation (flows) ---------------------------------------------------
    def _struct(self, *, for_schema: bool, title: str) -> type[msgspec.Struct]:
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for name, p in self.signature.parameters.items():
            hint = self.hints[name]
            if p.kind is _P.VAR_POSITIONAL:
                if for_schema:  # cannot be passed by name, so not part of the schema
                    continue
                hint = tuple[hint, ...]  # type: ignore[valid-type]
            elif p.kind is _P.VAR_KEYWORD:
                if for_schema:
                    continue
                hint = dict[str, hint]  # type: ignore[valid-type]
            if not for_schema or p.default is _P.empty:
                fields.append((name, hint))
            elif _jsonable(p.default):
                fields.append((name, hint, p.default))
            else:  # optional, but a default the schema cannot show
                fields.append((name, hint, msgspec.field(default_factory=lambda: None)))
        name = re.sub(r"\W", "_", title) or "Parameters"
        return msgspec.defstruct(name, fields, kw_only=True)

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` converted to their hints; raises ParameterError naming the parameter."""
        if not self._validator_built:
            # Built on first use: most flows never validate more than once per process.
            if any(h is not Any for h in self.hints.values()):
                self._validator = self._struct(for_schema=False, title=self.fn.__name__)
            self._validator_built = True
        if self._validator is None:
            return params
        try:
            converted = msgspec.convert(params, self._validator, strict=False)
        except msgspec.ValidationError as exc:
            raise _parameter_error(str(exc)) from None
        return {name: getattr(converted, name) for name in params}

    def schema(self, title: str, description: str | None = None) -> dict[str, Any]:
        """A JSON schema (draft 2020-12) of the parameters a deployment may pass."""
        struct = self._struct(for_schema=True, title=title)
        (_ref,), defs = msgspec.json.schema_components(
            [struct], schema_hook=_custom_type_schema, ref_template="#/$defs/{name}"
        )
        root = defs.pop(struct.__name__)
        root["title"] = title
        if description:
            root["description"] = description
        accepts_extra = any(p.kind is _P.VAR_KEYWORD for p in self.signature.parameters.values())
        root["additionalProperties"] = accepts_extra
        if defs:
            root["$defs"] = defs
        # Round trip so the schema holds JSON types only (a tuple default becomes a list).
        return typing.cast(dict[str, Any], msgspec.json.decode(_encoder.encode(root)))


def _custom_type_schema(tp: Any) -> dict[str, Any]:
    """A plain class has no JSON form: accept anything, keep its name as the title."""
    return {"title": getattr(tp, "__name__", str(tp))}


_PATH = re.compile(r"(?P<msg>.*) - at `\$\.(?P<name>[^`.\[]+)(?P<rest>[^`]*)`$", re.S)
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`")


def _parameter_error(text: str) -> ParameterError:
    found = _PATH.match(text)
    if found:
        name, rest = found["name"], found["rest"]
        where = f" (at {name}{rest})" if rest else ""
        return ParameterError(
            f"invalid value for parameter {name!r}: {found['msg']}{where}",
            details={"parameter": name},
        )
    missing = _MISSING.search(text)
    if missing:
        name = missing["name"]
        return ParameterError(f"missing required parameter {name!r}", details={"parameter": name})
    return ParameterError(f"invalid parameters: {text}")


def _parameter_in(text: str) -> str | None:
    """The parameter an ``inspect.Signature.bind`` error message names, if one."""
    found = re.search(r"'([^']+)'", text)
    return found[1] if found else None
