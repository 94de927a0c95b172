"""How concurrency-slot entries are named and read (the ``concurrency_slots`` bucket).

Entries are TTL leases; an expired one leaves a marker, a released one a
delete tombstone. nats-py's KV helpers do not recognise expiry markers, so
every reader decides "is this slot held?" with :func:`lease_from`.
"""

from __future__ import annotations

import msgspec
from nats.js.api import RawStreamMsg

from . import names
from .messages import SlotLease

STREAM = names.kv_stream(names.SLOTS_BUCKET)
_decoder = msgspec.json.Decoder(SlotLease)


def slot_subject(deployment_id: str, n: int) -> str:
    return f"$KV.{names.SLOTS_BUCKET}.{deployment_id}.{n}"


def is_live(msg: RawStreamMsg | None) -> bool:
    """Does a TTL-leased key's newest message hold a value (not a delete, purge
    or expiry marker)? For ``concurrency_slots`` and ``runner_heartbeats`` alike."""
    if msg is None or not msg.data:
        return False
    headers = msg.headers or {}
    return headers.get("KV-Operation") not in ("DEL", "PURGE") and (
        "Nats-Marker-Reason" not in headers
    )


def lease_from(msg: RawStreamMsg | None) -> SlotLease | None:
    """The live lease in a slot's newest message; None for a free slot."""
    if msg is None or not msg.data or not is_live(msg):
        return None
    try:
        return _decoder.decode(msg.data)
    except msgspec.DecodeError:
        return None
