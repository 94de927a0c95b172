"""Which dispatch subjects each of a runner's JetStream consumers pulls from.

Pure: from what a runner serves to the filter subjects of its consumers.
Every dispatch item must reach a runner through one of its consumers only,
or it costs a second claim request (and a second ``submit`` span).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shared import names
from shared.models import Deployment

__all__ = ["consumer_filters"]


def consumer_filters(
    queue: str | None, served: Iterable[str], deployments: Mapping[str, Deployment]
) -> list[list[str]]:
    """The filter subjects of each consumer, one list per consumer.

    A queue gets one consumer for all its items. Served deployments get a
    second one, except those whose queue is the runner's own: their items
    already come through the queue's consumer. The two cannot be one
    consumer, because JetStream refuses overlapping filters on one consumer.
    """
    out: list[list[str]] = []
    if queue is not None:
        out.append([f"{names.DISPATCH_PREFIX}.{queue}.>"])
    own = [
        d
        for d in sorted(served)
        if queue is None or d not in deployments or deployments[d].queue != queue
    ]
    if own:
        out.append([f"{names.DISPATCH_PREFIX}.*.{d}" for d in own])
    return out
