"""Retrying under the run's deadline: one loop shape, and the agent's retry rhythms by name.

Every retry in the agent is "try; on a transient failure pause `backoff(attempt)` without passing the deadline; try
again". `attempts` is that loop; the caller's body says what a try is, what it logs and what it raises when the
attempts run out:

    for _ in attempts(ctx.deadline, LOOK_AGAIN):
        ...try; return or break on success...
    raise SomeError("gave up: ...")
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from etcd_aws_cluster.base.deadline import Deadline, backoff


@dataclass(frozen=True)
class RetryPolicy:
    """The pauses between attempts: backoff(attempt, base, cap); at most `max_attempts` tries (None: until the
    deadline)."""

    base: float
    cap: float
    max_attempts: int | None = None

    def pause(self, attempt: int, rng: random.Random | None = None) -> float:
        """The pause after try number `attempt` (0 for the first) failed."""
        return backoff(attempt, base=self.base, cap=self.cap, rng=rng)


# One etcd call through any member. etcd 3.4 says "unhealthy cluster" for ~5 s after any membership change: retry
# often, not in long sleeps.
ETCD_CALL = RetryPolicy(base=0.25, cap=1.5)
# Gather the facts and decide again while the plan says wait (or a proxy's cluster has no instance yet).
LOOK_AGAIN = RetryPolicy(base=0.5, cap=3.0)
# Decide and act again after backing off from a concurrent joiner or a lost record race.
MEMBER_CHANGE = RetryPolicy(base=1.0, cap=5.0)
# One instance metadata request: a few quick tries, then the run ends with exit 3.
IMDS = RetryPolicy(base=0.2, cap=1.0, max_attempts=3)
# A refresh of the cluster record applied again to the fresh record after another instance wrote it first.
RECORD_WRITE = RetryPolicy(base=0.4, cap=2.0, max_attempts=4)


def attempts(deadline: Deadline, policy: RetryPolicy, rng: random.Random | None = None) -> Iterator[int]:
    """Yield the attempt numbers 0, 1, 2, ...: the first at once, each later one after the policy's pause.

    Ends (the caller then gives up) when the policy's attempts are used up, or when the deadline leaves no time
    for the pause or passes during it. The first attempt is always made, even past the deadline."""
    attempt = 0
    while True:
        yield attempt
        if policy.max_attempts is not None and attempt + 1 >= policy.max_attempts:
            return
        if not deadline.pause(policy.pause(attempt, rng)):
            return
        attempt += 1
