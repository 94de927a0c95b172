"""The Run form: fields built from a deployment's parameter schema, and back.

The form only turns text into JSON values; whether they fit the schema is
the orchestrator's decision (it validates every create). Its coded
``invalid_parameters`` error lists each problem with the parameter it
concerns, and :func:`field_errors` places each beside its field. Only what
the orchestrator cannot see is checked here: text in a JSON field that is
not JSON at all.

How text becomes a value: a ``string`` field is sent as typed; a checkbox as
true or false; anything else is read as JSON, except that in a number or
integer field text that is not JSON is sent as a string, so the orchestrator
says it is not a number. An empty field is left out, so the deployment's
default applies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from shared.errors import InvalidParameters, SluiceError
from shared.models import Deployment

__all__ = ["RAW_FIELD", "FormField", "field_errors", "fields_for", "read_form"]

#: The one field of a deployment without a schema: every parameter as a JSON object.
RAW_FIELD = "__parameters__"
_PREFIX = "p."
_REQUIRED = re.compile(r"^'([^']+)' is a required property")


@dataclass(frozen=True)
class FormField:
    name: str
    input_name: str
    kind: str
    """``string``, ``boolean``, ``choice``, ``json`` or ``raw`` (the whole object)."""
    type_label: str
    required: bool = False
    default: Any = None
    has_default: bool = False
    description: str | None = None
    choices: tuple[str, ...] = ()
    value: str = ""
    checked: bool = False
    error: str | None = None

    @property
    def label(self) -> str:
        return "parameters" if self.kind == "raw" else self.name

    @property
    def placeholder(self) -> str:
        if self.kind == "raw":
            return '{"name": "value"}'
        if not self.has_default:
            return "required" if self.required else ""
        default = self.default if self.kind == "string" else json.dumps(self.default)
        return f"default: {default}"


def _type_label(prop: Mapping[str, Any]) -> str:
    kind = prop.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if isinstance(kind, str):
        return kind
    options = prop.get("anyOf") or prop.get("oneOf")
    if isinstance(options, list):
        return " | ".join(_type_label(o) for o in options if isinstance(o, Mapping))
    if "$ref" in prop:
        return "object"
    return "any"


def fields_for(deployment: Deployment) -> list[FormField]:
    """One field per schema property; one JSON field when there is no schema."""
    schema = deployment.parameter_schema
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(properties, Mapping):
        defaults = json.dumps(deployment.parameters) if deployment.parameters else ""
        return [
            FormField(
                name=RAW_FIELD,
                input_name=RAW_FIELD,
                kind="raw",
                type_label="JSON object",
                description="Merged over the deployment's defaults"
                + (f" ({defaults})" if defaults else ""),
            )
        ]
    required = set(schema.get("required") or [])
    fields = []
    for name, prop in properties.items():
        prop = prop if isinstance(prop, Mapping) else {}
        label = _type_label(prop)
        has_default = name in deployment.parameters or "default" in prop
        default = deployment.parameters.get(name, prop.get("default"))
        enum = prop.get("enum")
        if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
            kind = "choice"
        elif label == "string":
            kind = "string"
        elif label == "boolean":
            kind = "boolean"
        else:
            kind = "json"
        fields.append(
            FormField(
                name=str(name),
                input_name=_PREFIX + str(name),
                kind=kind,
                type_label=label,
                required=name in required,
                default=default,
                has_default=has_default,
                description=prop.get("description") or prop.get("title"),
                choices=tuple(str(v) for v in enum) if kind == "choice" and enum else (),
                checked=bool(default) if kind == "boolean" else False,
            )
        )
    return fields


def read_form(
    fields: list[FormField], form: Mapping[str, str]
) -> tuple[list[FormField], dict[str, Any] | None]:
    """The fields as submitted (values kept for redisplay) and the parameters.

    The parameters are None when a field could not be read; that field then
    carries its error.
    """
    out: list[FormField] = []
    parameters: dict[str, Any] = {}
    ok = True
    for f in fields:
        text = form.get(f.input_name, "")
        if f.kind == "boolean":
            checked = f.input_name in form
            out.append(replace(f, checked=checked))
            parameters[f.name] = checked
            continue
        f = replace(f, value=text)
        if not text.strip():
            out.append(f)
            continue
        if f.kind in ("string", "choice"):
            parameters[f.name] = text
        elif f.kind == "raw":
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                f = replace(f, error=f"not valid JSON: {exc.msg} (line {exc.lineno})")
                ok = False
            else:
                if isinstance(value, dict):
                    parameters.update(value)
                else:
                    f = replace(f, error='must be a JSON object, e.g. {"name": "Ada"}')
                    ok = False
        else:
            try:
                parameters[f.name] = json.loads(text)
            except json.JSONDecodeError as exc:
                if f.type_label in ("number", "integer"):
                    parameters[f.name] = text  # the orchestrator names the type it wants
                else:
                    hint = ' (text needs quotes: "like this")' if f.type_label != "object" else ""
                    f = replace(f, error=f"not valid JSON: {exc.msg}{hint}")
                    ok = False
        out.append(f)
    return out, parameters if ok else None


def field_errors(fields: list[FormField], error: SluiceError) -> tuple[list[FormField], list[str]]:
    """Place an orchestrator error beside the fields it names; the rest is general."""
    if not isinstance(error, InvalidParameters):
        return fields, [error.message]
    problems = error.details.get("problems")
    if not isinstance(problems, list) or not problems:
        return fields, [error.message]
    by_name = {f.name: f for f in fields}
    raw = next((f for f in fields if f.kind == "raw"), None)
    messages: dict[str, list[str]] = {}
    general: list[str] = []
    for problem in problems:
        if not isinstance(problem, Mapping):
            continue
        where = str(problem.get("parameter", ""))
        message = str(problem.get("message", ""))
        name = where.split(".", 1)[0]
        if name not in by_name and (m := _REQUIRED.match(message)):
            name, message = m.group(1), "required"
        if name in by_name:
            messages.setdefault(name, []).append(message)
        elif raw is not None:
            messages.setdefault(raw.name, []).append(f"{where}: {message}")
        else:
            general.append(f"{where}: {message}" if where != "(parameters)" else message)
    placed = [
        replace(f, error="; ".join(messages[f.name])) if f.name in messages else f for f in fields
    ]
    return placed, general
