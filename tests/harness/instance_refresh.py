"""An Instance Refresh of a simulated group, as AWS runs one, with writes going on throughout.

AWS replaces the group's instances one at a time (MinHealthyPercentage: a 3-node group keeps 2 of 3 healthy):
it terminates an old instance, the group launches its replacement, and the refresh moves on only once the
replacement counts as healthy: InService, which a launching lifecycle hook delays until the hook completes.
:func:`replace_one` does one such step and plays each instance's units as systemd would: the old one's
``leave --on-termination`` (etcd-aws-cluster-leave.service), the new one's boot agent, etcd, ``promote`` (etcd's
``ExecStartPost=`` with ``learner = true``, after ``promote_after`` seconds: a learner that is slow to catch up)
and ``ready`` (etcd-aws-cluster-ready.service). Without a terminating hook the old instance goes at once, its member
left behind (an instance whose shutdown is cut short); without a launching hook the replacement is InService at
once, and the refresh goes on.

:class:`Writer` writes numbered keys through any answering member from a thread and keeps the acknowledged ones.
"""

from __future__ import annotations

import base64
import subprocess
import threading
import time
from dataclasses import dataclass, field

import requests

from tests.harness.sim import Node, SimulatedAsg

LEARNER = {"ETCD_AWS_CLUSTER_LEARNER": "true"}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class Writer:
    """Writes ``k<n> = v<n>`` through the first member that answers, every ``interval`` seconds, until stopped."""

    asg: SimulatedAsg
    interval: float = 0.05
    acknowledged: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    longest_gap: float = 0.0  # the longest time without an acknowledged write (quorum lost, or an election)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        http = requests.Session()
        http.trust_env = False
        n = 0
        last_ack = time.monotonic()
        while not self._stop.is_set():
            key, value = f"k{n:05d}", f"v{n}"
            if self._put(http, key, value):
                self.acknowledged[key] = value
                n += 1
                last_ack = time.monotonic()
            else:
                self.failures += 1
            self.longest_gap = max(self.longest_gap, time.monotonic() - last_ack)
            self._stop.wait(self.interval)
        http.close()

    def _put(self, http: requests.Session, key: str, value: str) -> bool:
        nodes = [n for n in list(self.asg.all_nodes) if n.etcd_pid is not None and not n.terminated]
        for node in nodes:
            try:
                response = http.post(
                    f"{node.client_url}/v3/kv/put", json={"key": _b64(key), "value": _b64(value)}, timeout=1.0
                )
            except requests.RequestException:
                continue
            if response.status_code == 200 and "error" not in response.json():
                return True
        return False

    def lost(self, via: Node) -> list[str]:
        """Acknowledged keys the cluster no longer has (read linearizably through `via`), or with another value."""
        response = requests.post(
            f"{via.client_url}/v3/kv/range",
            json={"key": _b64("k"), "range_end": _b64("l")},
            timeout=10,
        )
        response.raise_for_status()
        stored = {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in response.json().get("kvs", [])
        }
        return sorted(k for k, v in self.acknowledged.items() if stored.get(k) != v)


@dataclass
class Step:
    """One replacement: the instance that went, the one that came, and what each unit said."""

    old: Node
    new: Node
    promoter: threading.Timer
    leave_log: str = ""
    ready_log: str = ""
    boot_log: str = ""


def stop_etcd_command(node: Node, stopped_at: str) -> str:
    return f"sh -c 'kill {node.etcd_pid} && date +%s.%N > {stopped_at}'"


def replace_one(
    asg: SimulatedAsg,
    old: Node,
    *,
    hooked: bool,
    promote_after: float,
    timeout: float = 120,
) -> Step:
    """Replace `old` as one step of an Instance Refresh; returns once the refresh would go on to the next."""
    leave: subprocess.Popen[str] | None = None
    if hooked:  # the leave unit, waiting since boot
        env = {"ETCD_AWS_CLUSTER_STOP_ETCD_COMMAND": stop_etcd_command(old, str(old.workdir / "etcd-stopped-at"))}
        leave = asg.start_agent(old, "leave", "--on-termination", "--timeout", "900", env=env)
    asg.autoscaling.terminate_instance_in_auto_scaling_group(
        InstanceId=old.instance_id, ShouldDecrementDesiredCapacity=False
    )
    if not hooked:  # gone at once: no hook holds it, the shutdown is cut short
        asg.stop_etcd(old, kill=True)
    (new,) = asg.refresh()

    # Unhooked, the boot may find no quorum left: it then waits out its deadline, kept short here.
    boot_env = LEARNER if hooked else {**LEARNER, "ETCD_AWS_CLUSTER_TIMEOUT": "20"}
    result = asg.run_agent(new, env=boot_env, timeout=timeout)
    if result.returncode != 0 and hooked:
        raise AssertionError(f"boot of {new} exited {result.returncode}:\n{result.stderr}")
    if result.returncode != 0:  # an unhooked refresh goes on regardless; the caller checks the quorum
        return Step(old, new, threading.Timer(0, lambda: None), boot_log=result.stderr)
    asg.start_etcd(new)
    ready = asg.start_agent(new, "ready", "--timeout", str(timeout)) if hooked else None
    promoter = threading.Timer(promote_after, lambda: asg.run_agent(new, "promote", env=LEARNER, timeout=timeout))
    promoter.daemon = True
    promoter.start()
    step = Step(old, new, promoter)

    if hooked:
        assert leave is not None and ready is not None
        _, step.leave_log = leave.communicate(timeout=timeout)
        _, step.ready_log = ready.communicate(timeout=timeout)
        if ready.returncode != 0 or leave.returncode != 0:
            raise AssertionError(f"ready exited {ready.returncode}, leave {leave.returncode}:\n{step.ready_log}")
        promoter.join()
        asg.stop_etcd(old)  # reap it: the leave unit's stop command ended it
    _wait_in_service(asg, new, timeout)
    asg.refresh()
    return step


def _wait_in_service(asg: SimulatedAsg, node: Node, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        asg.refresh()
        if node.lifecycle_state == "InService":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node} not InService after {timeout}s")
        time.sleep(0.2)
