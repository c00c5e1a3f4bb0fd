"""One deadline for the whole run, and bounded retries under it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Deadline:
    seconds: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def restart(self) -> None:
        """Give the deadline its whole `seconds` again from now: a long-running command (backup --follow) bounds
        each step of its loop, not its whole life."""
        self.started = self.clock()

    def remaining(self) -> float:
        return max(0.0, self.started + self.seconds - self.clock())

    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def cap(self, timeout: float) -> float:
        """A per-call timeout that never outlives the deadline (but is never zero: requests rejects it)."""
        return max(0.05, min(timeout, self.remaining()))

    def pause(self, seconds: float) -> bool:
        """Sleep up to `seconds` without passing the deadline; False when no time is left."""
        wait = min(seconds, self.remaining())
        if wait <= 0:
            return False
        self.sleep(wait)
        return not self.expired


def backoff(attempt: int, base: float = 0.25, cap: float = 5.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter: a pause between half the ceiling and the ceiling, min(cap, base *
    2**attempt). The jitter keeps concurrent joiners from retrying in lockstep; the floor keeps them from hammering
    etcd with the near-zero pauses of full jitter (0 to the ceiling)."""
    ceiling = min(cap, base * (2**attempt))
    return (rng or random).uniform(ceiling / 2, ceiling)
