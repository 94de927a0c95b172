"""JSON encoding and decoding of everything on the wire.

One encoder, one cached decoder per type. Untrusted bytes go through
:func:`decode_request`: the size is checked first, then the bytes are decoded
straight into a typed Struct; every failure becomes a :class:`RequestError`
whose message says what was wrong and where.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from .errors import (
    ErrorBody,
    ErrorReply,
    InternalError,
    MalformedRequest,
    PayloadTooLarge,
    SluiceError,
    error_from_body,
)

T = TypeVar("T")

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024

_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


def encode_error(err: SluiceError) -> bytes:
    return _encoder.encode(ErrorReply(error=err.to_body()))


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    """One reused decoder per type (building one is the costly part)."""
    found = _decoders.get(type_)
    if found is None:
        found = _decoders[type_] = msgspec.json.Decoder(type_)
    return found


def decode(data: bytes, type_: type[T]) -> T:
    """Decode trusted bytes (our own KV values and events)."""
    return decoder(type_).decode(data)


def decode_request(data: bytes, type_: type[T], *, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> T:
    """Decode an untrusted request body.

    Raises PayloadTooLarge before looking at the bytes when there are too many,
    and MalformedRequest for an empty body, invalid JSON, wrong types or unknown
    fields (msgspec's message names the offending path, e.g. ``$.paramaters``).
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"request is {len(data)} bytes; the limit is {max_bytes} bytes",
            details={"size": len(data), "limit": max_bytes},
        )
    if not data.strip():
        raise MalformedRequest("empty request body; expected a JSON object")
    try:
        return decoder(type_).decode(data)
    except msgspec.ValidationError as exc:
        raise MalformedRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedRequest(f"request is not valid JSON: {exc}") from None


class _ErrorProbe(msgspec.Struct):
    error: ErrorBody | None = None


def decode_reply(data: bytes, type_: type[T]) -> T:
    """Decode a service's reply, raising the SluiceError it carries, if any."""
    try:
        probe = decoder(_ErrorProbe).decode(data)
    except msgspec.DecodeError as exc:
        raise InternalError(f"undecodable reply from the stack: {exc}") from None
    if probe.error is not None:
        raise error_from_body(probe.error)
    try:
        return decoder(type_).decode(data)
    except msgspec.DecodeError as exc:
        raise InternalError(f"unexpected reply from the stack: {exc}") from None
