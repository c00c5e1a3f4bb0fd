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

Run with ``make bench`` or ``.venv/bin/python scripts/bench.py [--etcd 3.4|3.5] [--reps N] [--output PATH]``.
Exit status 0 when the benchmark ran (whatever the numbers), 1 when it broke (docs/benchmarks.md is then kept).
Everything runs on 127.0.0.0/8 (moto, fake IMDS, etcd); every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.metadata
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.harness import etcd_binaries  # noqa: E402
from tests.harness.moto_server import MotoServer  # noqa: E402
from tests.harness.procs import ProcessRegistry  # noqa: E402
from tests.harness.sim import Node, SimulatedAsg  # noqa: E402

SIZES = (3, 5, 7, 9)
PROBE_TIMEOUT = 1.0
AGENT_TIMEOUT = 90.0
HEALTHY_TIMEOUT = 60.0
ETCD_GUARD = 5.0  # etcd refuses member changes until its peers have been connected this long (HealthInterval)
HELP_RUNS = 10
TARGET_WALL = 0.5
TARGET_HELP = 0.3
TARGET_RSS_MIB = 80.0
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

    @property
    def decision(self) -> str:
        found = re.search(r"decision=(\w+)", self.stderr)
        if found:
            return found.group(1)
        return "refused" if self.returncode == 6 else f"exit {self.returncode}"

    @property
    def retries(self) -> int:
        return sum(1 for line in self.stderr.splitlines() if line.endswith("; retrying"))

    @property
    def rss_mib(self) -> float:
        return self.maxrss_kib / 1024


@dataclass
class Results:
    bootstrap: dict[str, list[Run]] = field(default_factory=dict)
    rerun: list[Run] = field(default_factory=list)
    hung: list[tuple[str, int, list[Run], str]] = field(default_factory=list)  # (kind, hung peers, runs, expected)
    startup: dict[str, list[Run]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- measuring one process ---------------------------------------------------------------------------------
def launch(start: Callable[[], subprocess.Popen[str]]) -> tuple[float, subprocess.Popen[str]]:
    t0 = time.perf_counter()
    return t0, start()


def reap(what: str, t0: float, proc: subprocess.Popen[str], registry: ProcessRegistry, timeout: float) -> Run:
    """Wait for ``proc`` with os.wait4 (its own rusage: peak RSS, CPU), draining its pipes meanwhile."""
    chunks: dict[str, str] = {}

    def drain(name: str, stream: object) -> None:
        chunks[name] = stream.read() if stream is not None else ""  # type: ignore[attr-defined]

    readers = [
        threading.Thread(target=drain, args=(n, s), daemon=True)
        for n, s in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    lock = threading.Lock()
    reaped = False

    def kill() -> None:  # the timeout: only while the process is not reaped (its PID cannot be reused yet)
        with lock:
            if not reaped:
                os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        with lock:
            reaped = True
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    registry.forget(proc.pid)
    stderr = chunks.get("err", "")
    if proc.returncode == -signal.SIGKILL and wall >= timeout:
        stderr += f"\n(bench: killed after {timeout:.0f}s)"
    return Run(what, wall, proc.returncode, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, stderr)


def agents_at_once(asg: SimulatedAsg, nodes: Sequence[Node], what: str, env: dict[str, str] | None = None) -> list[Run]:
    """Start the agent for every node at once, then wait for all; one Run per node."""
    started = [launch(lambda n=node: asg.start_agent(n, env=env)) for node in nodes]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(started)) as pool:
        futures = [pool.submit(reap, what, t0, proc, asg.registry, AGENT_TIMEOUT) for t0, proc in started]
        return [f.result() for f in futures]


def agent(asg: SimulatedAsg, node: Node, what: str, env: dict[str, str] | None = None) -> Run:
    t0, proc = launch(lambda: asg.start_agent(node, env=env))
    return reap(what, t0, proc, asg.registry, AGENT_TIMEOUT)


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
        for rep in range(reps):
            moto.reset()
            with SimulatedAsg(moto.url, size, etcd) as asg:
                batch = agents_at_once(asg, asg.nodes, f"bootstrap {size} (rep {rep + 1})")
                expect(batch, "new")
                start_cluster(asg, asg.nodes, size)
                runs.extend(batch)
                if size == 3 and rep == reps - 1:
                    bench_rerun(asg, reps, res, log)
        res.bootstrap[f"{size} at once"] = runs
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
    log(f"bootstrap 3 one at a time: median {median(runs):.3f}s, max {worst(runs):.3f}s over {len(runs)} agents")


def bench_rerun(asg: SimulatedAsg, reps: int, res: Results, log: Callable[[str], None]) -> None:
    for rep in range(reps):
        for node in asg.nodes:
            res.rerun.append(agent(asg, node, f"member rerun (rep {rep + 1})"))
    expect(res.rerun, "member")
    asg.wait_healthy(3, timeout=HEALTHY_TIMEOUT)
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

        for hung in (0, 1, 2):
            if hung:
                asg.pause_etcd(hung1 if hung == 1 else hung2)
            runs = [agent(asg, me, f"member rerun, {hung} hung", env) for _ in range(reps)]
            expect(runs, "member")
            res.hung.append(("member rerun", hung, runs, "member"))
            log(f"member rerun with {hung} hung: median {median(runs):.3f}s")

        (newcomer,) = asg.scale_to(6)
        run = agent(asg, newcomer, "join, 2 hung", env)
        expect([run], "refused")
        res.hung.append(("join (scale-out to 6)", 2, [run], "refused: 3 of 5 answer, a 6th needs 4"))
        asg.resume_etcd(hung2)
        run = agent(asg, newcomer, "join, 1 hung", env)
        expect([run], "join")
        res.hung.append(("join (scale-out to 6)", 1, [run], "join"))
        start_cluster(asg, [newcomer], 6)
        log("joins with 0, 1, 2 hung peers done")


def bench_startup(python: str, console: Path, res: Results, log: Callable[[str], None]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ETCD_AWS_CLUSTER_"))}
    commands = {
        "python -m etcd_aws_cluster --help": [python, "-m", "etcd_aws_cluster", "--help"],
        f"{console.relative_to(ROOT) if console.is_relative_to(ROOT) else console} --help": [str(console), "--help"],
    }
    with ProcessRegistry() as registry:
        for label, argv in commands.items():
            runs = []
            for _ in range(HELP_RUNS):
                t0, proc = launch(lambda argv=argv: registry.start(argv, env=env, cwd=ROOT))
                runs.append(reap(label, t0, proc, registry, 30))
            if any(r.returncode != 0 for r in runs):
                raise BenchFailed(f"{label} failed:\n{runs[0].stderr[-1500:]}")
            res.startup[label] = runs
            log(f"{label}: median {median(runs):.3f}s")


# -- report ------------------------------------------------------------------------------------------------
def median(runs: Sequence[Run]) -> float:
    return statistics.median(r.wall for r in runs)


def worst(runs: Sequence[Run]) -> float:
    return max(r.wall for r in runs)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info(etcd: Path) -> list[tuple[str, str]]:
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
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("etcd used", f"{etcd_binaries.version_of(etcd)}"),
        ("etcd available", versions or "none"),
        ("packages", ", ".join(f"{n} {dist(n)}" for n in ("boto3", "botocore", "pydantic", "requests", "moto"))),
    ]


def report(res: Results, etcd: Path, reps: int, duration: float) -> str:
    agent_runs = [r for runs in res.bootstrap.values() for r in runs] + res.rerun
    agent_runs += [r for _, _, runs, _ in res.hung for r in runs]
    boot3 = res.bootstrap["3 at once"]
    boot3_alone = res.bootstrap["3 one at a time"]
    rss_max = max(r.rss_mib for r in agent_runs)
    hung_rerun = {k: runs for kind, k, runs, _ in res.hung if kind == "member rerun"}
    extra = {k: median(hung_rerun[k]) - median(hung_rerun[0]) for k in (1, 2)}

    targets = [
        ("file written, 3-node bootstrap, agents at once (median)", f"< {TARGET_WALL} s", median(boot3), TARGET_WALL),
        (
            "file written, 3-node bootstrap, one agent at a time (median)",
            f"< {TARGET_WALL} s",
            median(boot3_alone),
            TARGET_WALL,
        ),
        (
            "file written, member rerun on 3 nodes = steady-state boot (median)",
            f"< {TARGET_WALL} s",
            median(res.rerun),
            TARGET_WALL,
        ),
    ]
    rows = [(name, limit, f"{value:.3f} s", verdict(value < bound)) for name, limit, value, bound in targets]
    for label, runs in res.startup.items():
        rows.append(
            (
                f"`{label}` (median of {len(runs)})",
                f"< {TARGET_HELP} s",
                f"{median(runs):.3f} s",
                verdict(median(runs) < TARGET_HELP),
            )
        )
    rows.append(
        (
            "peak RSS of the agent (max over all runs)",
            f"< {TARGET_RSS_MIB:.0f} MiB",
            f"{rss_max:.1f} MiB",
            verdict(rss_max < TARGET_RSS_MIB),
        )
    )
    rows.append(
        (
            "2 hung peers cost one probe timeout, not 2 (member rerun, extra over 0 hung)",
            f"< {1.5 * PROBE_TIMEOUT:.1f} s",
            f"{extra[2]:.3f} s",
            verdict(extra[2] < 1.5 * PROBE_TIMEOUT),
        )
    )

    out = ["# Benchmarks", ""]
    out.append(
        "Written by `make bench` (`scripts/bench.py`); rerun it to refresh. Simulated ASGs on this one machine: "
        "moto for Auto Scaling/EC2, a fake IMDS per instance, one real etcd per instance on its own 127.x IP. "
        "Every agent run is a fresh `python -m etcd_aws_cluster` process: wall time is from just before it is "
        "started until it has exited (interpreter start, imports, IMDS, AWS calls, etcd probes, membership "
        "changes and the atomic write included); CPU time (user+sys) and peak RSS are that process's own, from "
        "`os.wait4`."
    )
    out += ["", "## Machine", "", table(("", ""), machine_info(etcd))]
    out += ["", "## Targets", "", table(("target", "limit", "measured", "result"), rows)]
    out += ["", "The benchmark reports; it does not fail the build on a FAIL.", ""]

    out += ["## a. Agent wall time to a written file", ""]
    out.append(
        f"Bootstrap: a fresh ASG per repetition ({reps} repetitions), the agent started on every instance at once "
        "(decision `new` everywhere), then etcd started from the files; a repetition only counts once that "
        "cluster is healthy. Statistics are over all agents of all repetitions. The simulated instances share "
        f"this machine's {len(os.sched_getaffinity(0))} CPUs, so with more instances than CPUs the agents "
        "slow each other down (compare the CPU time, which does not grow with the ASG); on EC2 every instance "
        "has its own CPU, which the one-at-a-time row approximates."
    )
    out.append("")
    brows = []
    for label, runs in res.bootstrap.items():
        brows.append(
            (
                label,
                str(len(runs)),
                f"{median(runs):.3f}",
                f"{worst(runs):.3f}",
                f"{statistics.median(r.cpu for r in runs):.3f}",
                f"{max(r.rss_mib for r in runs):.1f}",
            )
        )
    brows.append(
        (
            "member rerun on a running 3-node cluster, one at a time",
            str(len(res.rerun)),
            f"{median(res.rerun):.3f}",
            f"{worst(res.rerun):.3f}",
            f"{statistics.median(r.cpu for r in res.rerun):.3f}",
            f"{max(r.rss_mib for r in res.rerun):.1f}",
        )
    )
    out.append(table(("ASG size / run", "agents", "median wall s", "max wall s", "median CPU s", "max RSS MiB"), brows))

    out += ["", "## b. Hung peers (etcd SIGSTOPped: port open, no answer)", ""]
    out.append(
        f"A running 5-node cluster; probe timeout {PROBE_TIMEOUT} s (`ETCD_AWS_CLUSTER_PROBE_TIMEOUT`). The agent "
        "probes all peers in parallel, so k hung peers should cost one probe timeout, not k. The join with 0 hung "
        "replaces a terminated instance (remove + add) after the cluster has run for "
        f'{ETCD_GUARD:.0f} s (before that etcd refuses member changes as "unhealthy cluster"); the member '
        "reruns run on a non-leader member; the hung peers are non-leaders; the joins with 1 and 2 hung add a "
        "6th instance (scale-out)."
    )
    out.append("")
    hrows = []
    for kind, hung, runs, expected in res.hung:
        base = median(hung_rerun[0]) if kind == "member rerun" else None
        hrows.append(
            (
                kind,
                str(hung),
                str(len(runs)),
                f"{median(runs):.3f}",
                f"{worst(runs):.3f}",
                f"{median(runs) - base:+.3f}" if base is not None and hung else "",
                ", ".join(sorted({r.decision for r in runs}))
                + ("" if expected in ("member", "join") else f" ({expected})"),
                str(sum(r.retries for r in runs)),
            )
        )
    out.append(
        table(
            ("run", "hung peers", "runs", "median wall s", "max wall s", "vs 0 hung s", "decision", "etcd retries"),
            hrows,
        )
    )

    out += ["", "## c. Peak RSS of the agent", ""]
    rrows = [(label, f"{max(r.rss_mib for r in runs):.1f}") for label, runs in res.bootstrap.items()]
    rrows.append(("member rerun", f"{max(r.rss_mib for r in res.rerun):.1f}"))
    rrows.append(("hung-peer runs", f"{max(r.rss_mib for _, _, runs, _ in res.hung for r in runs):.1f}"))
    rrows += [(f"`{label}`", f"{max(r.rss_mib for r in runs):.1f}") for label, runs in res.startup.items()]
    out.append(table(("runs", "max peak RSS MiB"), rrows))
    out += ["", "Per process (`ru_maxrss` of that one child from `os.wait4`), not summed over the agents run at once."]

    out += ["", "## d. Start-up time of --help", ""]
    srows = [
        (f"`{label}`", str(len(runs)), f"{median(runs):.3f}", f"{worst(runs):.3f}")
        for label, runs in res.startup.items()
    ]
    out.append(table(("command", "runs", "median wall s", "max wall s"), srows))
    out += ["", *res.notes, "", f"Benchmark duration: {duration:.0f} s.", ""]
    return "\n".join(out)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--etcd", choices=["3.4", "3.5"], help="etcd version (default: 3.5 if available)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement (default: 3)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file to write")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)

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
    try:
        bench_startup(sys.executable, console, res, log)
        with MotoServer() as moto:
            bench_bootstrap(moto, etcd, args.reps, res, log)
            bench_hung(moto, etcd, args.reps, res, log)
    except BenchFailed as exc:
        print(
            f"\nbench: FAILED: {exc}\n(every process the bench started has been stopped; {args.output} is unchanged)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(
            f"\nbench: interrupted; every process it started has been stopped; {args.output} is unchanged",
            file=sys.stderr,
        )
        return 130
    text = report(res, etcd, args.reps, time.monotonic() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print("\n" + text)
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
