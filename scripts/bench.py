"""Benchmark etcd-aws-cluster on simulated Auto Scaling groups of real etcd processes; writes docs/benchmarks.md.

What is measured (every agent run is a fresh ``python -m etcd_aws_cluster`` process; wall time is from just before
the process is started until it has exited, so interpreter start and imports are included; peak RSS and CPU time
come from ``os.wait4`` for that one process):

a. bootstrap of ASGs of 3, 5, 7 and 9 instances, all agents started at once, then etcd started from the files
   they wrote (the run only counts when the cluster becomes healthy); the 3-instance bootstrap also one agent at
   a time (no CPU contention between the simulated instances); a "member" rerun on a running 3-node cluster
   (nothing to change: the steady-state boot cost).
b. a running 5-node cluster with 0, 1 and 2 hung peers (etcd SIGSTOPped): member rerun and join, probe timeout
   1.0 s (ETCD_AWS_CLUSTER_PROBE_TIMEOUT): the cost of hung peers should be one probe timeout, not k of them.
c. peak RSS of every agent run.
d. start-up time of ``python -m etcd_aws_cluster --help`` and of the ``etcd-aws-cluster --help`` console script.
f. with backup_url set: the join of a replacement with S3 healthy (moto) and with S3 hanging (an endpoint that
   accepts connections and never answers), paired: healing must not wait on S3.
g. continuous backups: ``backup --follow`` on every member of a running 3-node group (moto S3); the delta lag of
   writes through different members (from the write to a listed delta that holds its revision), the deltas' count
   and stored size, the followers' peak RSS, and their exit status at SIGTERM.

Run with ``make bench`` or ``.venv/bin/python scripts/bench.py [--etcd 3.4|3.5] [--reps N] [--output PATH]``.
Exit status 0 when every target is met, 1 when one is missed (the report is still written) or when the benchmark
broke (docs/benchmarks.md is then kept).
Everything runs on 127.0.0.0/8 (moto, fake IMDS, etcd); every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime
import importlib.metadata
import itertools
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.harness import etcd_binaries  # noqa: E402
from tests.harness.moto_server import MotoServer, s3_client  # noqa: E402
from tests.harness.procs import ProcessRegistry  # noqa: E402
from tests.harness.silent_server import SilentServer  # noqa: E402
from tests.harness.sim import Node, SimulatedAsg  # noqa: E402

if TYPE_CHECKING:
    from etcd_aws_cluster.adapters.s3 import BackupStore

SIZES = (3, 5, 7, 9)
PROBE_TIMEOUT = 1.0
AGENT_TIMEOUT = 90.0
HEALTHY_TIMEOUT = 60.0
ETCD_GUARD = 5.0  # etcd refuses member changes until its peers have been connected this long (HealthInterval)
HELP_RUNS = 10
HUNG_REPS = 5
BARE_PYTHON = "python -c pass (a bare interpreter, for comparison)"
STUCK_WAIT = 5.0  # how long the bench lets a new member's etcd try to start while a peer is hung
TARGET_WALL = 0.5
TARGET_HELP = 0.3
TARGET_RSS_MIB = 80.0
TARGET_S3_HANG_EXTRA = 1.0  # a join with S3 hanging, over the same join with S3 healthy
FOLLOW_INTERVAL = 2.0  # ETCD_AWS_CLUSTER_BACKUP_DELTA_INTERVAL of section g
FOLLOW_WRITES = 10
FOLLOW_WRITE_GAP = 1.3  # seconds between the writes: not a multiple of the interval, so the writes land at every
# point of a delta's interval, first of a batch (waits the whole interval) as well as later ones
FOLLOW_POLL = 0.05  # how often the bench lists the deltas
FOLLOW_COVER_TIMEOUT = 30.0  # a write still in no listed delta by then breaks the bench
FOLLOW_STOP_TIMEOUT = 70.0  # a follower's last delta may take 60 s (app/follow.FINAL_BUDGET) before it exits
TARGET_DELTA_LAG_EXTRA = 2.0  # the max delta lag, over the delta interval (see follow_section for why 2 s)
S3_REPS = 3
BENCH_BUCKET = "bench-backups"
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"


class BenchFailed(Exception):
    """The benchmark itself broke (an agent failed where it must succeed, etcd did not come up, ...)."""


@dataclass
class Run:
    """One measured process."""

    what: str
    wall: float
    returncode: int | None
    maxrss_kib: int
    cpu: float
    stderr: str = ""
    stdout: str = ""

    @property
    def decision(self) -> str:
        found = re.search(r"decision=(\w+)", self.stderr)
        if found:
            return found.group(1)
        return "refuse" if self.returncode == 6 else f"exit {self.returncode}"

    @property
    def retries(self) -> int:
        return sum(1 for line in self.stderr.splitlines() if line.endswith("; retrying"))

    @property
    def rss_mib(self) -> float:
        return self.maxrss_kib / 1024


@dataclass
class Results:
    bootstrap: dict[str, list[Run]] = field(default_factory=dict)
    reps: dict[str, int] = field(default_factory=dict)
    rerun: list[Run] = field(default_factory=list)
    hung: list[tuple[str, int, list[Run], str]] = field(default_factory=list)  # (kind, hung peers, runs, expected)
    startup: dict[str, list[Run]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    importtime: Run | None = None
    stages: list[tuple[str, float, int, int]] = field(default_factory=list)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    s3_join: dict[str, list[Run]] = field(default_factory=dict)  # "healthy" / "hanging" -> paired join runs
    follow: FollowResult | None = None


@dataclass
class FollowResult:
    """Section g: `backup --follow` on a 3-node group."""

    interval: float  # backup_delta_interval
    lags: list[float]  # per write, seconds from the write to a listed delta holding its revision
    opened: list[bool]  # per write: its revision was its delta's first (it waited the whole interval)
    delta_sizes: list[int]  # stored bytes of every delta of the run
    revisions_per_delta: list[int] = field(default_factory=list)
    peak_rss_kib: dict[str, int] = field(default_factory=dict)  # "leader" / "standing by" -> VmHWM before SIGTERM
    exits: list[int] = field(default_factory=list)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)  # at the section's start

    @property
    def median_lag(self) -> float:
        return statistics.median(self.lags)

    @property
    def max_lag(self) -> float:
        return max(self.lags)

    @property
    def added(self) -> list[float]:
        """Lag minus the interval of the writes that opened their delta: what the watch, the upload and the
        listing add to the wait the interval sets."""
        return [lag - self.interval for lag, opened in zip(self.lags, self.opened) if opened]


# -- measuring one process ---------------------------------------------------------------------------------
# A small launcher measures each run. The measured process must not be forked from this (large) benchmark
# process: Linux accounts the memory a child had before exec to its ru_maxrss, so every direct child would report
# at least the benchmark's own RSS. The launcher (python -I -S, a few MiB) forks+execs the command, waits with
# os.wait4 and writes wall time (fork to exit), peak RSS (KiB) and CPU time of that one process to a file.
LAUNCHER = """
import os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    f.write(f"{wall} {ru.ru_maxrss} {ru.ru_utime + ru.ru_stime}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""
_stats_dir: Path | None = None
_stats_counter = itertools.count()


def launch(
    registry: ProcessRegistry, argv: Sequence[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.Popen[str], Path]:
    """Start ``argv`` under the launcher (in its own session, registered for cleanup)."""
    assert _stats_dir is not None
    stats = _stats_dir / f"run-{next(_stats_counter)}"
    proc = registry.start([sys.executable, "-I", "-S", "-c", LAUNCHER, str(stats), *argv], env=env, cwd=cwd)
    return proc, stats


def reap(what: str, proc: subprocess.Popen[str], stats: Path, registry: ProcessRegistry, timeout: float) -> Run:
    """Wait for a launched run and read its measurements."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        registry.stop(proc.pid)
        raise BenchFailed(f"{what}: still running after {timeout:.0f}s; stopped") from None
    finally:
        registry.forget(proc.pid)
    try:
        wall, maxrss, cpu = stats.read_text().split()
    except (OSError, ValueError):
        raise BenchFailed(f"{what}: the launcher wrote no measurements (exit {proc.returncode}):\n{stderr}") from None
    return Run(what, float(wall), proc.returncode, int(maxrss), float(cpu), stderr, stdout)


def agents_at_once(asg: SimulatedAsg, nodes: Sequence[Node], what: str, env: dict[str, str] | None = None) -> list[Run]:
    """Start the agent for every node at once, then wait for all; one Run per node."""
    started = [launch(asg.registry, asg.agent_argv(), asg.agent_env(n, env), n.workdir) for n in nodes]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(started)) as pool:
        futures = [pool.submit(reap, what, proc, stats, asg.registry, AGENT_TIMEOUT) for proc, stats in started]
        return [f.result() for f in futures]


def agent(asg: SimulatedAsg, node: Node, what: str, env: dict[str, str] | None = None) -> Run:
    proc, stats = launch(asg.registry, asg.agent_argv(), asg.agent_env(node, env), node.workdir)
    return reap(what, proc, stats, asg.registry, AGENT_TIMEOUT)


def expect(runs: Iterable[Run], decision: str) -> None:
    for run in runs:
        if run.decision != decision:
            tail = "\n".join(run.stderr.strip().splitlines()[-15:])
            raise BenchFailed(f"{run.what}: expected decision {decision}, got {run.decision}:\n{tail}")


def start_cluster(asg: SimulatedAsg, nodes: Sequence[Node], expected: int) -> None:
    for node in nodes:
        asg.start_etcd(node)
    try:
        asg.wait_healthy(expected, timeout=HEALTHY_TIMEOUT)
    except (RuntimeError, TimeoutError) as exc:
        raise BenchFailed(f"etcd did not become healthy: {exc}") from None


def leader_of(asg: SimulatedAsg) -> Node:
    """The node whose etcd is the raft leader (v3 JSON gateway /v3/maintenance/status)."""
    with requests.Session() as http:
        http.trust_env = False
        for node in asg.running_nodes():
            try:
                status = http.post(f"{node.client_url}/v3/maintenance/status", json={}, timeout=2).json()
            except (requests.RequestException, ValueError):
                continue
            leader = int(status.get("leader", 0))
            for member in asg.members(node):
                if int(member["ID"]) == leader:
                    return asg.node(str(member["name"]))
    raise BenchFailed("no etcd reports a leader")


# -- the sections ------------------------------------------------------------------------------------------
def bench_bootstrap(moto: MotoServer, etcd: Path, reps: int, res: Results, log: Callable[[str], None]) -> None:
    for size in SIZES:
        runs: list[Run] = []
        size_reps = reps if size <= 5 else max(1, reps - 1)  # the big ones cost the most and vary the least
        for rep in range(size_reps):
            moto.reset()
            with SimulatedAsg(moto.url, size, etcd) as asg:
                batch = agents_at_once(asg, asg.nodes, f"bootstrap {size} (rep {rep + 1})")
                expect(batch, "new")
                start_cluster(asg, asg.nodes, size)
                runs.extend(batch)
                if size == 3 and rep == size_reps - 1:
                    bench_rerun(asg, reps, res, log)
        res.bootstrap[f"{size} at once"] = runs
        res.reps[f"{size} at once"] = size_reps
        log(f"bootstrap {size}: median {median(runs):.3f}s, max {worst(runs):.3f}s over {len(runs)} agents")
    # One agent at a time: what one instance sees when its CPU is its own (as on EC2), same decision (new).
    moto.reset()
    with SimulatedAsg(moto.url, 3, etcd) as asg:
        runs = []
        for rep in range(reps):
            for node in asg.nodes:
                runs.append(agent(asg, node, f"bootstrap 3 one at a time (rep {rep + 1})"))
        expect(runs, "new")
        start_cluster(asg, asg.nodes, 3)
    res.bootstrap["3 one at a time"] = runs
    res.reps["3 one at a time"] = 1  # one ASG, every agent run `reps` times (decision new each time)
    log(f"bootstrap 3 one at a time: median {median(runs):.3f}s, max {worst(runs):.3f}s over {len(runs)} agents")


def bench_rerun(asg: SimulatedAsg, reps: int, res: Results, log: Callable[[str], None]) -> None:
    for rep in range(reps):
        for node in asg.nodes:
            res.rerun.append(agent(asg, node, f"member rerun (rep {rep + 1})"))
    expect(res.rerun, "member")
    asg.wait_healthy(3, timeout=HEALTHY_TIMEOUT)
    # Where the time of one such run goes: -X importtime (adds a little overhead of its own).
    node = asg.nodes[0]
    proc, stats = launch(
        asg.registry, [sys.executable, "-X", "importtime", "-m", "etcd_aws_cluster"], asg.agent_env(node), node.workdir
    )
    res.importtime = reap("member rerun with -X importtime", proc, stats, asg.registry, AGENT_TIMEOUT)
    expect([res.importtime], "member")
    log(f"member rerun on 3: median {median(res.rerun):.3f}s, max {worst(res.rerun):.3f}s over {len(res.rerun)} runs")


def bench_hung(moto: MotoServer, etcd: Path, reps: int, res: Results, log: Callable[[str], None]) -> None:
    env = {"ETCD_AWS_CLUSTER_PROBE_TIMEOUT": str(PROBE_TIMEOUT)}
    moto.reset()
    with SimulatedAsg(moto.url, 5, etcd) as asg:
        runs = agents_at_once(asg, asg.nodes, "bootstrap 5")
        expect(runs, "new")
        start_cluster(asg, asg.nodes, 5)
        formed = time.monotonic()
        leader = leader_of(asg)
        others = [n for n in asg.nodes if n is not leader]
        me, gone, hung1, hung2 = others  # the agent runs on `me`; `gone` is terminated; hung1/2 get SIGSTOPped
        log(f"5-node cluster up; leader {leader.ip}, agent on {me.ip}, hung peers will be {hung1.ip}, {hung2.ip}")

        # Joins need a cluster whose peers have been connected for ETCD_GUARD seconds, or etcd says
        # "unhealthy cluster" and the agent retries: that would measure etcd's guard, not the agent.
        time.sleep(max(0.0, formed + ETCD_GUARD + 1.0 - time.monotonic()))
        (replacement,) = asg.terminate(gone, replace=True)
        run = agent(asg, replacement, "join, 0 hung", env)
        expect([run], "join")
        res.hung.append(("join (replace a terminated instance)", 0, [run], "join"))
        start_cluster(asg, [replacement], 5)

        # Interleaved (0, 1, 2 hung, then again), so that a change in machine load hits all three alike.
        by_hung: dict[int, list[Run]] = {0: [], 1: [], 2: []}
        for _ in range(max(reps, HUNG_REPS)):
            for hung, peers in ((0, ()), (1, (hung1,)), (2, (hung1, hung2))):
                for node in (hung1, hung2):
                    if node in peers and not node.etcd_paused:
                        asg.pause_etcd(node)
                    elif node not in peers and node.etcd_paused:
                        asg.resume_etcd(node)
                by_hung[hung].append(agent(asg, me, f"member rerun, {hung} hung", env))
        for hung, runs in by_hung.items():
            expect(runs, "member")
            res.hung.append(("member rerun", hung, runs, "member"))
            log(f"member rerun with {hung} hung: median {median(runs):.3f}s")

        (newcomer,) = asg.scale_to(6)
        run = agent(asg, newcomer, "join, 2 hung", env)
        expect([run], "refuse")
        res.hung.append(("join (scale-out to 6)", 2, [run], "as it must: 3 of 5 answer, a 6th member needs 4"))
        asg.resume_etcd(hung2)
        run = agent(asg, newcomer, "join, 1 hung", env)
        expect([run], "join")
        res.hung.append(("join (scale-out to 6)", 1, [run], "join"))
        log("joins with 0, 1, 2 hung peers done")

        # Not the agent: etcd itself. A new member's etcd does not finish starting while an existing member
        # accepts connections but never answers (seen with 3.4 and 3.5); it does once that peer is back.
        asg.start_etcd(newcomer)
        try:
            asg.wait_healthy(6, timeout=STUCK_WAIT)
            res.notes.append(
                "- The new member's etcd (join with 1 hung peer) became healthy while that peer was still hung."
            )
        except TimeoutError:
            resumed = time.monotonic()
            asg.resume_etcd(hung1)
            try:
                asg.wait_healthy(6, timeout=HEALTHY_TIMEOUT)
            except (RuntimeError, TimeoutError) as exc:
                raise BenchFailed(f"etcd of the new member did not start after the hung peer resumed: {exc}") from None
            res.notes.append(
                f"- etcd {etcd_binaries.version_of(etcd)}, not the agent: after the join with 1 hung peer (the agent"
                f" wrote its file in {run.wall:.1f} s), the new member's etcd did not finish starting in"
                f" {STUCK_WAIT:.0f} s while the hung peer (SIGSTOPped: it accepts connections, never answers) was"
                f" stopped; it was healthy {time.monotonic() - resumed:.1f} s after SIGCONT. Until then the cluster"
                " has one hung and one unstarted voting member: no failure can be tolerated."
            )
        log("etcd of the joined member started")


def bench_s3_hang(moto: MotoServer, etcd: Path, reps: int, res: Results, log: Callable[[str], None]) -> None:
    """A 3-node cluster with backup_url; one instance replaced at a time, the replacement's agent seeing S3
    healthy or hanging (ASG/EC2 stay on moto), alternately. The gone member is removed by hand and etcd's guard
    waited out first, so that both joins do the same etcd work: one add."""

    moto.reset()
    s3 = s3_client(moto.url)
    s3.create_bucket(Bucket=BENCH_BUCKET)
    env = {"ETCD_AWS_CLUSTER_BACKUP_URL": f"s3://{BENCH_BUCKET}/etcd"}
    res.s3_join = {"healthy": [], "hanging": []}
    with SimulatedAsg(moto.url, 3, etcd) as asg, SilentServer() as silent:
        expect(agents_at_once(asg, asg.nodes, "bootstrap 3 with backup_url", env), "new")
        start_cluster(asg, asg.nodes, 3)
        for _ in range(max(reps, S3_REPS)):
            for label, extra in (("healthy", {}), ("hanging", {"AWS_ENDPOINT_URL_S3": silent.url})):
                replacement = replace_non_leader(asg)
                run = agent(asg, replacement, f"join, S3 {label}", {**env, **extra})
                expect([run], "join")
                res.s3_join[label].append(run)
                start_cluster(asg, [replacement], 3)
    log(
        f"join with S3 healthy: median {median(res.s3_join['healthy']):.3f}s; "
        f"S3 hanging: median {median(res.s3_join['hanging']):.3f}s"
    )


def replace_non_leader(asg: SimulatedAsg) -> Node:
    """Kill a non-leader's etcd, remove its member by hand, wait out etcd's guard, and replace the instance."""
    leader = leader_of(asg)
    victim = next(n for n in asg.nodes if n is not leader)
    member_id = next(int(m["ID"]) for m in asg.members(leader) if m.get("name") == victim.instance_id)
    asg.stop_etcd(victim, kill=True)
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    while True:  # etcd refuses a removal as "unhealthy cluster" for a few seconds after a change
        answer = requests.post(f"{leader.client_url}/v3/cluster/member/remove", json={"ID": member_id}, timeout=5)
        if answer.status_code == 200:
            break
        if time.monotonic() > deadline:
            raise BenchFailed(f"etcd did not remove the member of {victim}: {answer.text}")
        time.sleep(0.5)
    time.sleep(ETCD_GUARD + 1.0)
    (replacement,) = asg.terminate(victim, replace=True)
    return replacement


def s3_hang_extra(res: Results) -> float:
    """The extra wall time of a join with S3 hanging over the join with S3 healthy just before it (paired)."""
    pairs = zip(res.s3_join["hanging"], res.s3_join["healthy"])
    return statistics.median(hanging.wall - healthy.wall for hanging, healthy in pairs)


def s3_section(res: Results) -> list[str]:
    out = ["", "## f. Healing while S3 hangs (backup_url set)", ""]
    out.append(
        "A running 3-node cluster with `backup_url` (moto's S3); one non-leader at a time is killed, its member "
        f"removed by hand, etcd's {ETCD_GUARD:.0f} s guard waited out, and its replacement's agent joins (one "
        "member add) with S3 healthy, then the next replacement with S3 hanging (`AWS_ENDPOINT_URL_S3` an "
        "endpoint that accepts connections and never answers; ASG and EC2 on moto). With S3 healthy the join "
        "takes the insurance snapshot (the first) or finds a fresh one, and updates the cluster record after "
        "the env file; with S3 hanging both are skipped once S3 has not answered its first call within "
        "0.75 s (backups.S3_ANSWER_WITHIN)."
    )
    out.append("")
    rows = [(label, str(len(runs)), f"{median(runs):.3f}", f"{worst(runs):.3f}") for label, runs in res.s3_join.items()]
    out.append(table(("join of a replacement, S3", "runs", "median wall s", "max wall s"), rows))
    out += ["", f"Hanging over healthy, median of the paired differences: {s3_hang_extra(res):+.3f} s."]
    return out


def bench_follow(moto: MotoServer, etcd: Path, res: Results, log: Callable[[str], None]) -> None:
    """`backup --follow` on every member of a running 3-node group: the delta lag of writes through different
    members (see measure_delta_lag), the deltas stored, the followers' peak RSS; every follower must exit 0 at
    SIGTERM."""

    from etcd_aws_cluster.adapters.s3 import BackupStore

    moto.reset()
    s3 = s3_client(moto.url)
    s3.create_bucket(Bucket=BENCH_BUCKET)
    url = f"s3://{BENCH_BUCKET}/etcd"
    env = {"ETCD_AWS_CLUSTER_BACKUP_URL": url, "ETCD_AWS_CLUSTER_BACKUP_DELTA_INTERVAL": str(FOLLOW_INTERVAL)}
    tool = etcd_binaries.snapshot_tool(etcd)
    if tool is not None:
        env["ETCD_AWS_CLUSTER_ETCDUTL"] = str(tool)
    load = os.getloadavg()
    with SimulatedAsg(moto.url, 3, etcd) as asg:
        expect(agents_at_once(asg, asg.nodes, "bootstrap 3 with backup_url", env), "new")
        start_cluster(asg, asg.nodes, 3)
        store = BackupStore(s3, url, asg.name, region="us-east-1")
        leader = leader_of(asg)
        logs = {node.instance_id: node.workdir / "follow.log" for node in asg.nodes}
        followers = {
            node.instance_id: asg.start_agent(node, "backup", "--follow", env=env, log_path=logs[node.instance_id])
            for node in asg.nodes
        }
        wait_logged(followers[leader.instance_id], logs[leader.instance_id], r"following from revision \d+")
        log(f"backup --follow on 3 members; the leader ({leader.ip}) follows; {FOLLOW_WRITES} writes")
        lags, opened = measure_delta_lag(asg, store)
        if leader_of(asg) is not leader:
            raise BenchFailed("the etcd leader changed during the delta lag measurement: the lags are not comparable")
        peak = {node.instance_id: peak_rss_kib(followers[node.instance_id].pid) for node in asg.nodes}
        exits = []
        for proc in followers.values():
            proc.send_signal(signal.SIGTERM)
        for instance_id, proc in followers.items():
            try:
                exits.append(proc.wait(timeout=FOLLOW_STOP_TIMEOUT))
            except subprocess.TimeoutExpired:
                raise BenchFailed(
                    f"backup --follow ({instance_id}) still running {FOLLOW_STOP_TIMEOUT:.0f}s after SIGTERM"
                ) from None
            asg.registry.forget(proc.pid)
        if any(exits):
            tails = "\n".join(logs[i].read_text(errors="replace")[-1500:] for i in followers)
            raise BenchFailed(f"backup --follow exited {exits} at SIGTERM, not 0 everywhere:\n{tails}")
        listed = store.list_deltas()
    standby = [kib for instance_id, kib in peak.items() if instance_id != leader.instance_id]
    res.follow = FollowResult(
        interval=FOLLOW_INTERVAL,
        lags=lags,
        opened=opened,
        delta_sizes=[d.size for d in listed],
        revisions_per_delta=[d.last - d.first + 1 for d in listed],
        peak_rss_kib={"leader": peak[leader.instance_id], "standing by (max of 2)": max(standby)},
        exits=exits,
        load=load,
    )
    log(
        f"delta lag, interval {FOLLOW_INTERVAL:g}s: median {res.follow.median_lag:.2f}s, max "
        f"{res.follow.max_lag:.2f}s; {len(listed)} deltas; followers exited {exits}"
    )


def wait_logged(proc: subprocess.Popen[str], path: Path, pattern: str, timeout: float = HEALTHY_TIMEOUT) -> None:
    """Wait until the process logging to `path` has logged a match of `pattern`; BenchFailed if it exits first or
    the timeout passes."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, path.read_text(errors="replace") if path.exists() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
            raise BenchFailed(f"{path.name}: no {pattern!r} within {timeout:.0f}s (exit {proc.poll()}):\n{tail}")
        time.sleep(0.05)


def measure_delta_lag(asg: SimulatedAsg, store: BackupStore) -> tuple[list[float], list[bool]]:
    """FOLLOW_WRITES writes FOLLOW_WRITE_GAP seconds apart, each through the next member; meanwhile the deltas are
    listed every FOLLOW_POLL seconds. A write's lag: from just before it was sent until a listing that returned a
    delta holding its revision had returned; and whether the write opened its delta (see opened_a_delta). In the
    order of the writes."""
    nodes = asg.nodes
    outstanding: dict[int, float] = {}  # revision -> when its write was sent
    lags: dict[int, float] = {}
    started = time.monotonic()
    deadline = started + FOLLOW_WRITES * FOLLOW_WRITE_GAP + FOLLOW_COVER_TIMEOUT
    writes = 0
    with requests.Session() as http:
        http.trust_env = False
        while writes < FOLLOW_WRITES or outstanding:
            if time.monotonic() > deadline:
                raise BenchFailed(f"revisions {sorted(outstanding)} in no listed delta after {FOLLOW_COVER_TIMEOUT}s")
            if writes < FOLLOW_WRITES and time.monotonic() >= started + writes * FOLLOW_WRITE_GAP:
                sent = time.monotonic()
                outstanding[put_revision(http, nodes[writes % len(nodes)], f"/bench/lag/{writes}")] = sent
                writes += 1
            spans = [(d.first, d.last) for d in store.list_deltas()]
            lags.update(newly_covered(outstanding, spans, time.monotonic()))
            for revision in lags:
                outstanding.pop(revision, None)
            time.sleep(FOLLOW_POLL)
    in_order = sorted(lags)
    spans = [(d.first, d.last) for d in store.list_deltas()]
    return [lags[r] for r in in_order], opened_a_delta(in_order, spans)


def newly_covered(outstanding: dict[int, float], spans: Iterable[tuple[int, int]], now: float) -> dict[int, float]:
    """Of the outstanding revisions (revision -> when it was written), those a listed delta (first, last) holds,
    each with its lag at `now`."""
    listed = list(spans)
    return {
        revision: now - written
        for revision, written in outstanding.items()
        if any(first <= revision <= last for first, last in listed)
    }


def opened_a_delta(revisions: Sequence[int], spans: Iterable[tuple[int, int]]) -> list[bool]:
    """For each of the bench's revisions: was it the first of them in the delta (first, last) that holds it (it
    waited that delta's whole interval)? A delta's range also holds revisions no write of the bench made (it
    starts where the one before ended), so its first revision does not tell."""
    listed = list(spans)
    return [
        not any(
            first <= earlier < revision for earlier in revisions for first, last in listed if first <= revision <= last
        )
        for revision in revisions
    ]


def put_revision(http: requests.Session, node: Node, key: str) -> int:
    """Write `key` through `node`'s etcd (v3 JSON gateway); the revision the write made."""
    body = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(b"v").decode()}
    answer = http.post(f"{node.client_url}/v3/kv/put", json=body, timeout=5)
    if answer.status_code != 200:
        raise BenchFailed(f"a write through {node.ip} failed: {answer.status_code} {answer.text[:200]}")
    return int(answer.json()["header"]["revision"])


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a running process: its peak resident set so far (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def spread(values: Sequence[float], sign: str = "") -> str:
    """'median / max' in seconds, or '-' for none."""
    if not values:
        return "-"
    return f"{statistics.median(values):{sign}.3f} / {max(values):{sign}.3f} s"


def follow_section(res: Results) -> list[str]:
    follow = res.follow
    if follow is None:
        return []
    out = ["", "## g. Continuous backups: `backup --follow`", ""]
    out.append(
        "A running 3-node group bootstrapped by the agent with `backup_url` (moto's S3 on loopback), "
        f"`backup_delta_interval` {follow.interval:g} s (`ETCD_AWS_CLUSTER_BACKUP_DELTA_INTERVAL`), "
        "`etcd-aws-cluster backup --follow` started on every member (the leader takes the first full snapshot and "
        f"follows from it, the others stand by). Then {len(follow.lags)} writes {FOLLOW_WRITE_GAP} s apart (not a "
        "multiple of the interval: some writes open a batch and wait the whole interval, others join one), each "
        "through the next member. A write's delta lag is the time from just before the write is sent until a "
        f"listing of the deltas (one every {FOLLOW_POLL * 1000:.0f} ms) that holds its revision has returned: the "
        "recovery point of a write between full snapshots. The etcd leader stayed the same throughout. Load "
        f"average at the section's start: {_load(follow.load)} (1/5/15 min, {len(os.sched_getaffinity(0))} CPUs "
        "shared by 3 etcd, 3 followers, moto and the bench)."
    )
    out.append("")
    opening = [lag for lag, opened in zip(follow.lags, follow.opened) if opened]
    joining = [lag for lag, opened in zip(follow.lags, follow.opened) if not opened]
    rows = [
        ("writes", f"{len(follow.lags)} ({len(opening)} opened a delta, {len(joining)} joined one)"),
        ("delta lag, median / max", spread(follow.lags)),
        ("delta lag of the writes that opened their delta (waited the whole interval), median / max", spread(opening)),
        (
            "the same minus the interval (what the watch, the upload and the listing add), median / max",
            spread(follow.added, "+"),
        ),
        ("delta lag of the writes that joined a delta, median / max", spread(joining)),
        (
            "every lag in write order (* opened its delta), s",
            ", ".join(f"{lag:.2f}{'*' if opened else ''}" for lag, opened in zip(follow.lags, follow.opened)),
        ),
        ("deltas stored", str(len(follow.delta_sizes))),
        ("revisions per delta, median", f"{statistics.median(follow.revisions_per_delta or [0]):g}"),
        (
            "stored bytes per delta, median / max",
            f"{statistics.median(follow.delta_sizes or [0]):.0f} / {max(follow.delta_sizes or [0])}",
        ),
    ]
    rows += [(f"peak RSS of a follower, {role}", f"{kib / 1024:.1f} MiB") for role, kib in follow.peak_rss_kib.items()]
    rows.append(("exit status at SIGTERM", ", ".join(str(code) for code in follow.exits)))
    out.append(table(("", ""), rows))
    out += [
        "",
        "A write waits in the follower until the oldest pending change is `backup_delta_interval` old: a write "
        "that opens a delta waits the whole interval, one that joins it less, so the max lag is an opening write's "
        "and the median depends on how the writes fall. The target allows the max "
        f"{TARGET_DELTA_LAG_EXTRA:g} s over the interval for what follows that wait: etcd's watch delivering the "
        "change, the follower's loop looking at the clock (every 0.25 s, app/follow.TICK), asking etcd whether its "
        "member still leads, compressing and PUTting the delta; then the bench's own listing, up to one poll late. "
        "Here that adds a few hundred ms at most (the row above); a small PUT to real S3 takes tens to a few "
        "hundred ms more, and the rest leaves room for a loaded 2-CPU machine. What the limit is there to catch: "
        "a write whose delta misses its turn and waits a second interval (with the "
        f"{follow.interval:g} s interval here, that is at least {2 * follow.interval:g} s plus the same overhead, "
        "past the limit), or a watch or an upload that stalls; one failed upload retried after its 1 s backoff "
        "(app/follow.RETRY_BASE) would still pass. Peak RSS is each "
        "follower's VmHWM (/proc/PID/status) just before SIGTERM: the followers run "
        "for the whole section, so it is their steady state with this small load, not a bound under a heavy one.",
    ]
    return out


def bench_startup(python: str, console: Path, res: Results, log: Callable[[str], None]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ETCD_AWS_CLUSTER_"))}
    commands = {
        BARE_PYTHON: [python, "-c", "pass"],
        "`python -m etcd_aws_cluster --help`": [python, "-m", "etcd_aws_cluster", "--help"],
        f"`{console.relative_to(ROOT) if console.is_relative_to(ROOT) else console} --help`": [str(console), "--help"],
    }
    with ProcessRegistry() as registry:
        for label, argv in commands.items():
            runs = []
            for _ in range(HELP_RUNS):
                proc, stats = launch(registry, argv, env, ROOT)
                runs.append(reap(label, proc, stats, registry, 30))
            if any(r.returncode != 0 for r in runs):
                raise BenchFailed(f"{label} failed:\n{runs[0].stderr[-1500:]}")
            res.startup[label] = runs
            log(f"{label.strip('`')}: median {median(runs):.3f}s")


STAGES = """
import sys, time
t0 = time.perf_counter()
def mark(step):
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    kib = lambda key: int(status[key].split()[0])
    print(f"{step}\t{time.perf_counter() - t0:.4f}\t{kib('VmRSS')}\t{kib('VmHWM')}", flush=True)
mark("interpreter started (python -c)")
import etcd_aws_cluster.cli
mark("import etcd_aws_cluster.cli")
import requests
mark("import requests")
import etcd_aws_cluster.app.settings
mark("import etcd_aws_cluster.app.settings (pydantic-settings)")
import boto3
mark("import boto3")
session = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
session.client("autoscaling", endpoint_url="http://127.0.0.1:9")
mark("boto3 client autoscaling")
session.client("ec2", endpoint_url="http://127.0.0.1:9")
mark("boto3 client ec2")
"""


def bench_stages(res: Results, log: Callable[[str], None]) -> None:
    """RSS and time after each heavy step of an agent run, in one fresh process (see STAGES)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ETCD_AWS_CLUSTER_"))}
    env["PYTHONPATH"] = str(ROOT)
    with ProcessRegistry() as registry:
        proc, stats = launch(registry, [sys.executable, "-c", STAGES], env, ROOT)
        run = reap("memory breakdown", proc, stats, registry, 60)
    for line in run.stdout.splitlines():
        step, t, rss_kib, hwm_kib = line.split("\t")
        res.stages.append((step, float(t), int(rss_kib), int(hwm_kib)))
    if run.returncode != 0 or not res.stages:  # the agent's modules moved: report what was measured
        res.notes.append(f"- The memory breakdown stopped early: {run.stderr.strip().splitlines()[-1:]}")
        return
    bare = median(res.startup[BARE_PYTHON]) if BARE_PYTHON in res.startup else 0.0
    _, last, rss, _ = res.stages[-1]
    # Interpreter start is not in the steps' clock (it starts in the script); the rest of the wall time is exit.
    res.stages.append(("process exit (interpreter shutdown)", run.wall - bare, rss, run.maxrss_kib))
    log(f"memory breakdown: {len(res.stages)} steps, exit took {run.wall - bare - last:.3f}s")


# -- report ------------------------------------------------------------------------------------------------
def median(runs: Sequence[Run]) -> float:
    return statistics.median(r.wall for r in runs)


def worst(runs: Sequence[Run]) -> float:
    return max(r.wall for r in runs)


@dataclass(frozen=True)
class Target:
    """One measured figure and its limit. `min_cpus`: it is a target only on a machine with that many CPUs (with
    fewer, the simulated instances share CPUs that each EC2 instance has to itself): the row says so instead."""

    name: str
    value: float
    limit: float
    unit: str = "s"
    min_cpus: int = 1

    def shown(self, value: float) -> str:
        return f"{value:.3f} s" if self.unit == "s" else f"{value:.1f} {self.unit}"

    @property
    def applies(self) -> bool:
        return len(os.sched_getaffinity(0)) >= self.min_cpus

    @property
    def missed(self) -> bool:
        return self.applies and not self.value < self.limit

    def row(self) -> tuple[str, str, str, str]:
        limit = f"< {self.limit:g} s" if self.unit == "s" else f"< {self.limit:.0f} {self.unit}"
        if not self.applies:
            cpus = len(os.sched_getaffinity(0))
            result = f"not a target here: needs {self.min_cpus} CPUs, this machine has {cpus}"
        else:
            result = "FAIL" if self.missed else "PASS"
        return (self.name, limit, self.shown(self.value), result)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info(etcd: Path, res: Results) -> list[tuple[str, str]]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    versions = ", ".join(f"{etcd_binaries.version_of(p)} ({p})" for p in etcd_binaries.available().values())

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    return [
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPUs (nproc)", f"{len(os.sched_getaffinity(0))} ({cpu})"),
        ("memory", mem),
        ("load average (1/5/15 min) at start / end", f"{_load(res.load)} / {_load(res.load_end)}"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("etcd used", f"{etcd_binaries.version_of(etcd)}"),
        ("etcd available", versions or "none"),
        ("packages", ", ".join(f"{n} {dist(n)}" for n in ("boto3", "botocore", "pydantic", "requests", "moto"))),
    ]


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def hung_extra(res: Results) -> dict[int, float]:
    """Extra wall time of a member rerun with 1 and 2 hung peers over 0 hung. Paired: each round ran 0, 1 and 2
    hung back to back, so load from elsewhere on the machine mostly cancels."""
    reruns = {k: runs for kind, k, runs, _ in res.hung if kind == "member rerun"}
    return {k: statistics.median(a.wall - b.wall for a, b in zip(reruns[k], reruns[0])) for k in (1, 2)}


def agent_runs(res: Results) -> list[Run]:
    runs = [r for group in res.bootstrap.values() for r in group] + res.rerun
    runs += [r for group in res.s3_join.values() for r in group]
    return runs + [r for _, _, group, _ in res.hung for r in group]


def targets(res: Results) -> list[Target]:
    wall = "file written, {} (median)"
    found = [
        Target(
            wall.format("3-node bootstrap, agents at once"), median(res.bootstrap["3 at once"]), TARGET_WALL, min_cpus=3
        ),
        Target(
            wall.format("3-node bootstrap, one agent at a time"), median(res.bootstrap["3 one at a time"]), TARGET_WALL
        ),
        Target(wall.format("member rerun on 3 nodes = steady-state boot"), median(res.rerun), TARGET_WALL),
    ]
    found += [
        Target(f"{label} (median of {len(runs)})", median(runs), TARGET_HELP)
        for label, runs in res.startup.items()
        if label != BARE_PYTHON
    ]
    rss_max = max(r.rss_mib for r in agent_runs(res))
    found.append(Target("peak RSS of the agent (max over all runs)", rss_max, TARGET_RSS_MIB, unit="MiB"))
    found.append(
        Target(
            "2 hung peers cost one probe timeout, not 2 (member rerun, extra over 0 hung, paired median)",
            hung_extra(res)[2],
            1.5 * PROBE_TIMEOUT,
        )
    )
    found.append(
        Target(
            "a join with S3 hanging, extra over the same join with S3 healthy (paired median)",
            s3_hang_extra(res),
            TARGET_S3_HANG_EXTRA,
        )
    )
    if res.follow is not None:
        found.append(
            Target(
                f"backup --follow: a write in a listed delta, max over {len(res.follow.lags)} writes "
                f"(delta interval {res.follow.interval:g} s + {TARGET_DELTA_LAG_EXTRA:g} s)",
                res.follow.max_lag,
                res.follow.interval + TARGET_DELTA_LAG_EXTRA,
            )
        )
    return found


def intro_section(res: Results, etcd: Path) -> list[str]:
    out = ["# Benchmarks", ""]
    out.append(
        "Written by `make bench` (`scripts/bench.py`); rerun it to refresh. Simulated ASGs on this one machine: "
        "moto for Auto Scaling/EC2, a fake IMDS per instance, one real etcd per instance on its own 127.x IP. "
        "Every agent run is a fresh `python -m etcd_aws_cluster` process: wall time is from just before it is "
        "started until it has exited (interpreter start, imports, IMDS, AWS calls, etcd probes, membership "
        "changes and the atomic write included); CPU time (user+sys) and peak RSS are that process's own, from "
        "`os.wait4`."
    )
    out += ["", "## Machine", "", table(("", ""), machine_info(etcd, res))]
    out += ["", "## Targets", "", table(("target", "limit", "measured", "result"), [t.row() for t in targets(res)])]
    out += [
        "",
        "A missed target makes `make bench` exit 1 (the report is still written). A target that needs more CPUs "
        "than this machine has is shown but not judged: the agents it measures would share CPUs that EC2 "
        "instances each have to themselves.",
        "",
    ]
    return out


def stats_row(label: str, reps_done: str, runs: Sequence[Run]) -> tuple[str, ...]:
    return (
        label,
        reps_done,
        str(len(runs)),
        f"{median(runs):.3f}",
        f"{worst(runs):.3f}",
        f"{statistics.median(r.cpu for r in runs):.3f}",
        f"{max(r.rss_mib for r in runs):.1f}",
    )


def wall_section(res: Results) -> list[str]:
    out = ["## a. Agent wall time to a written file", ""]
    out.append(
        "Bootstrap: a fresh ASG per repetition (column ASGs), the agent started on every instance at once "
        "(decision `new` everywhere), then etcd started from the files; a repetition only counts once that "
        "cluster is healthy. Statistics are over all agents of all repetitions. The simulated instances share "
        f"this machine's {len(os.sched_getaffinity(0))} CPUs, so with more instances than CPUs the agents "
        "slow each other down (compare the CPU time, which does not grow with the ASG); on EC2 every instance "
        "has its own CPU, which the one-at-a-time row approximates."
    )
    out.append("")
    brows = [stats_row(f"bootstrap, {label}", str(res.reps[label]), runs) for label, runs in res.bootstrap.items()]
    brows.append(stats_row("member rerun on a running 3-node cluster, one at a time", "", res.rerun))
    header = ("run", "ASGs", "agent runs", "median wall s", "max wall s", "median CPU s", "max RSS MiB")
    out.append(table(header, brows))
    return out


def hung_section(res: Results) -> list[str]:
    extra = hung_extra(res)
    out = ["", "## b. Hung peers (etcd SIGSTOPped: port open, no answer)", ""]
    out.append(
        f"A running 5-node cluster; probe timeout {PROBE_TIMEOUT} s (`ETCD_AWS_CLUSTER_PROBE_TIMEOUT`). The agent "
        "probes all peers in parallel, so k hung peers should cost one probe timeout, not k. The join with 0 hung "
        "replaces a terminated instance (remove + add) after the cluster has run for "
        f'{ETCD_GUARD:.0f} s (before that etcd refuses member changes as "unhealthy cluster"); the member '
        "reruns run on a non-leader member; the hung peers are non-leaders; the joins with 1 and 2 hung add a "
        '6th instance (scale-out). The member reruns are interleaved (0, 1, 2 hung, repeated) and "vs 0 hung" is '
        "the median of the differences within a round, so that load from elsewhere on the machine mostly cancels."
    )
    out.append("")
    hrows = [
        (
            kind,
            str(hung),
            str(len(runs)),
            f"{median(runs):.3f}",
            f"{worst(runs):.3f}",
            f"{extra[hung]:+.3f}" if kind == "member rerun" and hung else "",
            ", ".join(sorted({r.decision for r in runs}))
            + ("" if expected in ("member", "join") else f" ({expected})"),
            str(sum(r.retries for r in runs)),
        )
        for kind, hung, runs, expected in res.hung
    ]
    header = ("run", "hung peers", "runs", "median wall s", "max wall s", "vs 0 hung s", "decision", "etcd retries")
    out.append(table(header, hrows))
    return out


def rss_section(res: Results) -> list[str]:
    out = ["", "## c. Peak RSS of the agent", ""]
    rrows = [(label, f"{max(r.rss_mib for r in runs):.1f}") for label, runs in res.bootstrap.items()]
    rrows.append(("member rerun", f"{max(r.rss_mib for r in res.rerun):.1f}"))
    rrows.append(("hung-peer runs", f"{max(r.rss_mib for _, _, runs, _ in res.hung for r in runs):.1f}"))
    rrows += [
        (f"join with backup_url, S3 {label}", f"{max(r.rss_mib for r in runs):.1f}")
        for label, runs in res.s3_join.items()
    ]
    rrows += [(label, f"{max(r.rss_mib for r in runs):.1f}") for label, runs in res.startup.items()]
    out.append(table(("runs", "max peak RSS MiB"), rrows))
    out += [
        "",
        "Per process, not summed over the agents run at once: `ru_maxrss` from `os.wait4` in a small launcher that "
        "forks and execs the agent. (Measured from a child of the benchmark process itself, `ru_maxrss` would "
        "include the benchmark's own memory: Linux counts a child's pre-exec pages towards its peak.)",
    ]
    if res.stages:
        out += [
            "",
            "Where the memory and time go, step by step in one fresh process doing what the agent does before its "
            "first request (imports, then the two boto3 clients; nothing is contacted), then exiting normally. "
            "Time is counted from the first line of the script (the bare interpreter start before it is in "
            "section d); the exit row is the process's whole wall time minus that start:",
            "",
            table(
                ("step", "time s (cumulative)", "RSS MiB", "peak RSS MiB"),
                [(step, f"{t:.3f}", f"{rss / 1024:.1f}", f"{hwm / 1024:.1f}") for step, t, rss, hwm in res.stages],
            ),
        ]
    return out


def startup_section(res: Results) -> list[str]:
    out = ["", "## d. Start-up time of --help", ""]
    srows = [
        (label, str(len(runs)), f"{median(runs):.3f}", f"{worst(runs):.3f}") for label, runs in res.startup.items()
    ]
    out.append(table(("command", "runs", "median wall s", "max wall s"), srows))
    if res.importtime is not None:
        out += ["", "## e. Where a member rerun's time goes", ""]
        out += importtime_section(res.importtime, res.startup.get(BARE_PYTHON, []))
    return out


def report(res: Results, etcd: Path, duration: float) -> str:
    out = intro_section(res, etcd) + wall_section(res) + hung_section(res) + rss_section(res)
    out += startup_section(res) + s3_section(res) + follow_section(res)
    out += ["", "## Notes", "", *res.notes, "", f"Benchmark duration: {duration:.0f} s.", ""]
    return "\n".join(out)


def importtime_section(run: Run, bare: Sequence[Run]) -> list[str]:
    """Top-level imports (cumulative) of one agent run under -X importtime."""
    top: list[tuple[float, str]] = []
    for line in run.stderr.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if found:  # the name is not indented: imported at top level (possibly from inside a function)
            top.append((int(found.group(1)) / 1e6, found.group(2).strip()))
    total = sum(t for t, _ in top)
    rows = [(f"`{name}`", f"{t:.3f}") for t, name in sorted(top, reverse=True) if t >= 0.005]
    bare_s = median(bare) if bare else 0.0
    rest = run.wall - total - bare_s
    return [
        f"One member rerun on the running 3-node cluster under `python -X importtime` (which slows imports a "
        f"little): {run.wall:.3f} s wall, of which {total:.3f} s imports"
        + (f", {bare_s:.3f} s a bare interpreter start (`python -c pass`, median)" if bare else "")
        + f" and {rest:.3f} s the rest (IMDS, building the boto3 clients, AWS calls, etcd probes, writing, and"
        " the interpreter's shutdown: see the last row of the step table under c).",
        "",
        table(("top-level import (5 ms or more)", "cumulative s"), rows),
    ]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--etcd", choices=["3.4", "3.5"], help="etcd version (default: 3.5 if available)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement (default: 3)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file to write")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored

    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    found = etcd_binaries.available()
    if not found or (args.etcd and args.etcd not in found):
        print(f"bench: etcd {args.etcd or ''} not available (found: {', '.join(found) or 'none'})", file=sys.stderr)
        return 1
    etcd = found[args.etcd] if args.etcd else found.get("3.5", found[max(found)])
    console = Path(sys.executable).parent / "etcd-aws-cluster"
    if not console.exists():
        console = ROOT / ".venv" / "bin" / "etcd-aws-cluster"
    res = Results()
    log(f"etcd {etcd_binaries.version_of(etcd)} ({etcd}); {len(os.sched_getaffinity(0))} CPUs; reps {args.reps}")
    global _stats_dir
    res.load = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="etcd-aws-cluster-bench-") as tmp:
            _stats_dir = Path(tmp)
            bench_startup(sys.executable, console, res, log)
            bench_stages(res, log)
            with MotoServer() as moto:
                bench_bootstrap(moto, etcd, args.reps, res, log)
                bench_hung(moto, etcd, args.reps, res, log)
                bench_s3_hang(moto, etcd, args.reps, res, log)
                bench_follow(moto, etcd, res, log)
    except BenchFailed as exc:
        print(f"\nbench: FAILED: {exc}", file=sys.stderr)
        print(f"(every process the bench started has been stopped; {args.output} is unchanged)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\nbench: interrupted; every process it started has been stopped; {args.output} is unchanged",
            file=sys.stderr,
        )
        return 130
    res.load_end = os.getloadavg()
    text = report(res, etcd, time.monotonic() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print("\n" + text)
    log(f"wrote {args.output}")
    missed = [t.name for t in targets(res) if t.missed]
    if missed:
        print(f"bench: {len(missed)} target(s) missed: {'; '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
