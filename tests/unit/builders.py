"""Ids, addresses and members shared by the table tests of the plan and of reconcile."""

from __future__ import annotations

from etcd_aws_cluster.core.model import Endpoints, Member

EP = Endpoints()
IDS = [f"i-00000000000000{n:02d}" for n in range(10)]
IPS = [f"10.0.0.{n + 1}" for n in range(10)]


def member(n: int, *, started: bool = True, learner: bool = False, name: str | None = None) -> Member:
    """Member 100+n of instance n: started (named, client URL published) unless `started` is False."""
    return Member(
        id=100 + n,
        name=(IDS[n] if name is None else name) if started else "",
        peer_urls=(EP.peer_url(IPS[n]),),
        client_urls=(EP.client_url(IPS[n]),) if started else (),
        is_learner=learner,
    )
