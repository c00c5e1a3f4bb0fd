"""Facts the agent gathers and the plan it derives: small frozen values, no behaviour beyond naming."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from etcd_aws_cluster.core.records import SnapshotInfo

# Every lifecycle state of the Auto Scaling API (botocore's autoscaling model, shape LifecycleState), in one of
# three classes. tests/unit/core/test_lifecycle.py checks that each state of the installed botocore is classified.
#
# Members: the instance is, or is about to be, a cluster member. A root volume replacement keeps the instance,
# its id and its IP: it stays a member (its data may be lost; the plan handles a member without data).
MEMBER_STATES = frozenset(
    {
        "InService",
        "Pending",
        "Pending:Wait",
        "Pending:Proceed",
        "ReplacingRootVolume",
        "ReplacingRootVolume:Wait",
        "ReplacingRootVolume:Proceed",
        "RootVolumeReplaced",
    }
)
# Gone: on its way out of the group for good; its member may be removed. Terminating:Retained is an instance
# whose termination the group gave up on (a lifecycle hook's retention): it has left the group all the same.
GONE_STATES = frozenset(
    {
        "Terminating",
        "Terminating:Wait",
        "Terminating:Proceed",
        "Terminating:Retained",
        "Terminated",
        "Warmed:Terminating",
        "Warmed:Terminating:Wait",
        "Warmed:Terminating:Proceed",
        "Warmed:Terminating:Retained",
        "Warmed:Terminated",
    }
)
# Neither: in the group but not taking part now, and may come back: not counted as a member, never removed for
# its state alone (reconcile_remove_states may name some). A warm-pool instance (Warmed:*) joins once it leaves
# the pool; any state a future API adds lands here too, so it never stops the boot of the others.
OTHER_STATES = frozenset(
    {
        "Quarantined",
        "Detaching",
        "Detached",
        "EnteringStandby",
        "Standby",
        "Warmed:Pending",
        "Warmed:Pending:Wait",
        "Warmed:Pending:Proceed",
        "Warmed:Pending:Retained",
        "Warmed:Stopped",
        "Warmed:Running",
        "Warmed:Hibernated",
    }
)
WARM_POOL_PREFIX = "Warmed:"


@dataclass(frozen=True)
class Identity:
    instance_id: str
    private_ip: str
    region: str


@dataclass(frozen=True)
class AsgInstance:
    instance_id: str
    lifecycle_state: str
    private_ip: str | None

    @property
    def counts_as_member(self) -> bool:
        return self.lifecycle_state in MEMBER_STATES

    @property
    def is_gone(self) -> bool:
        return self.lifecycle_state in GONE_STATES

    @property
    def in_warm_pool(self) -> bool:
        """Still in the group's warm pool (Warmed:*), including on its way out of it."""
        return self.lifecycle_state.startswith(WARM_POOL_PREFIX)

    @property
    def state_is_known(self) -> bool:
        return self.lifecycle_state in MEMBER_STATES | GONE_STATES | OTHER_STATES


@dataclass(frozen=True)
class AsgView:
    name: str
    desired_capacity: int
    instances: tuple[AsgInstance, ...]

    def members(self) -> tuple[AsgInstance, ...]:
        """Instances that count as cluster members, sorted by instance id."""
        return tuple(sorted((i for i in self.instances if i.counts_as_member), key=lambda i: i.instance_id))

    def find(self, instance_id: str) -> AsgInstance | None:
        return next((i for i in self.instances if i.instance_id == instance_id), None)


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False

    @property
    def started(self) -> bool:
        """etcd's own rule: a member that has published its name has started at least once."""
        return bool(self.name)

    @property
    def serving(self) -> bool:
        """Its etcd has run and published its client URLs. A member of a new cluster's initial list has a name
        from the start (so etcd counts it as started) but no client URLs until its etcd first comes up."""
        return self.started and bool(self.client_urls)

    @property
    def hex_id(self) -> str:
        return f"{self.id:x}"


@dataclass(frozen=True)
class MemberList:
    """One peer's answer to a member list call."""

    members: tuple[Member, ...]
    cluster_id: int | None = None


@dataclass(frozen=True)
class EndpointStatus:
    """One member's own view: its id, and the id of the leader it follows (0: it knows no leader)."""

    member_id: int
    leader: int
    is_learner: bool = False
    revision: int = 0  # the store's revision when it answered
    version: str = ""  # the etcd server version
    db_size: int = 0  # bytes of its backend db, what a snapshot streams (0: not reported)


class EtcdFailure(enum.Enum):
    """How one etcd call failed: the adapter raises it, a probe carries it."""

    REFUSED = "refused"  # nothing listens on the client port (yet)
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # no connection for another reason (no route, reset, DNS)
    TLS = "tls"
    HTTP = "http"  # an HTTP error status; `status` says which
    ANSWER = "answer"  # an answer that is not what the API promises (malformed, oversized, inconsistent)
    INVALID_ANSWER = "invalid answer"  # an answer the agent refuses to use (a value failed validation)


@dataclass(frozen=True)
class Probe:
    """The result of asking one ASG instance's etcd for the member list."""

    instance_id: str
    ip: str
    answer: MemberList | None = None
    error: EtcdFailure | None = None
    detail: str = ""
    # Peer URLs this peer's etcd bootstraps with, when it is still forming a new cluster (no quorum yet):
    # its client port then accepts connections but does not answer, so the peer port is asked instead.
    bootstrapping: frozenset[str] | None = None

    @property
    def answered(self) -> bool:
        return self.answer is not None

    @property
    def failure(self) -> str:
        """How the call failed, as words for a log line or a table ("" when it answered)."""
        return self.error.value if self.error is not None else ""


@dataclass(frozen=True)
class Endpoints:
    """How member URLs are formed from an instance's IP."""

    client_scheme: str = "http"
    peer_scheme: str = "http"
    client_port: int = 2379
    peer_port: int = 2380

    def peer_url(self, ip: str) -> str:
        return f"{self.peer_scheme}://{ip}:{self.peer_port}"

    def client_url(self, ip: str) -> str:
        return f"{self.client_scheme}://{ip}:{self.client_port}"


class Decision(str, enum.Enum):
    NEW = "new"  # no cluster exists and the ASG view is complete: bootstrap one
    MEMBER = "member"  # this instance is already in the member list
    JOIN = "join"  # a cluster exists: remove gone members, add this instance
    RESTART = "restart"  # no peer answers but local member data exists: etcd restarts from it
    WAIT = "wait"  # not enough is known yet to decide safely; look again
    RESTORE = "restore"  # the cluster record says a cluster existed and none of its members is left: restore it


@dataclass(frozen=True)
class Plan:
    decision: Decision
    reason: str
    cluster_state: str = "existing"
    initial_cluster: tuple[tuple[str, str], ...] = ()
    remove: tuple[Member, ...] = ()
    add_self: bool = False
    move_data_aside: bool = False
    members: tuple[Member, ...] = field(default=(), compare=False)
    # RESTORE: the snapshots to try, newest first; the first whose checksum holds is restored
    restore: tuple[SnapshotInfo, ...] = ()
