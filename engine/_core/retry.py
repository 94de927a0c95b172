"""Retry policy as data, retry delay as a pure function.

The engine asks :func:`next_delay` how long to wait before retry number
``retry_count`` (1 for the first retry). Randomness comes in as an argument so
the function stays pure and tests can pin it.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How often and after what delays a failed run is tried again.

    ``delays`` are seconds before the 1st, 2nd, … retry; the last one repeats
    for any further retry. ``jitter_factor`` j adds up to ``j * delay`` at
    random, never subtracts: a retry never comes earlier than asked.
    """

    retries: int = 0
    delays: tuple[float, ...] = (0.0,)
    jitter_factor: float = 0.0

    @classmethod
    def build(
        cls,
        retries: int | None,
        delay_seconds: float | Sequence[float] | None,
        jitter_factor: float | None = None,
    ) -> RetryPolicy:
        """Validate decorator arguments; raise ValueError naming the bad one."""
        retries = retries or 0
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        if delay_seconds is None:
            delays: tuple[float, ...] = (0.0,)
        elif isinstance(delay_seconds, int | float):
            delays = (float(delay_seconds),)
        else:
            delays = tuple(float(d) for d in delay_seconds) or (0.0,)
        if any(d < 0 for d in delays):
            raise ValueError(f"retry_delay_seconds must be >= 0, not {delay_seconds!r}")
        jitter = jitter_factor or 0.0
        if jitter < 0:
            raise ValueError(f"retry_jitter_factor must be >= 0, not {jitter_factor}")
        return cls(retries=retries, delays=delays, jitter_factor=jitter)


def next_delay(policy: RetryPolicy, retry_count: int, rand: float) -> float:
    """Seconds to wait before retry ``retry_count`` (1-based); ``rand`` is uniform in [0, 1)."""
    base = policy.delays[min(retry_count, len(policy.delays)) - 1]
    return base + base * policy.jitter_factor * rand
