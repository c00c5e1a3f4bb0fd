"""Demo: etcd-aws-cluster on a simulated 3-instance Auto Scaling group of real etcd processes.

Everything runs on this machine, on 127.0.0.0/8: a moto server plays AWS, a fake IMDS per instance plays the
instance metadata service, and each simulated instance runs its own etcd on its own loopback IP. Nothing talks
to AWS or to 169.254.169.254.

Steps: bootstrap three instances with the agent (concurrently), start etcd from the files it wrote, write a key,
terminate one instance through the ASG (moto launches a replacement), run the agent on the replacement (it
removes the dead member and joins), and read the key back from the new member. Act 2 (backups, to a moto S3
bucket): write a key, back it up, terminate every instance; the replacements restore the snapshot and serve it.
Act 3 (a rolling refresh): with the group's two lifecycle hooks, replace every instance one at a time while a
writer keeps writing; `ready` holds each launch until its learner is promoted, `leave --on-termination` each
termination until its member has left; no acknowledged write is lost.

Run with ``make demo [ETCD_VERSION=3.6]`` (sets up .venv and etcd first) or
``.venv/bin/python scripts/demo.py [--etcd 3.4|3.5|3.5.30|3.6|3.7]`` (default: the newest etcd of the matrix).
Every process it starts is stopped by PID at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness import etcd_binaries  # noqa: E402
from tests.harness import lifecycle_actions as hooks  # noqa: E402
from tests.harness.instance_refresh import Writer, replace_one  # noqa: E402
from tests.harness.moto_server import MotoServer  # noqa: E402
from tests.harness.sim import Node, SimulatedAsg  # noqa: E402

AGENT_TIMEOUT = 60.0
HEALTHY_TIMEOUT = 30.0
KEY = "demo/greeting"
BACKUP_KEY = "demo/precious"
BACKUP_BUCKET = "demo-backups"
BACKUP_URL = f"s3://{BACKUP_BUCKET}/etcd"
# Act 3: how long each replacement's learner takes to catch up before `promote` makes it a voter.
PROMOTE_AFTER = 3.0


class DemoFailed(Exception):
    """A step failed; ``details`` (agent stderr, etcd log tail) is shown under the message."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class Out:
    """Narrated output: bold/dim only when stdout is a terminal (and NO_COLOR is not set)."""

    def __init__(self) -> None:
        self.color = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self.started = time.monotonic()
        self.step_no = 0

    def _style(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, title: str) -> None:
        self.step_no += 1
        clock = self._style("2", f"[{self.elapsed():5.1f}s]")
        print(f"\n{clock} {self._style('1', f'{self.step_no}. {title}')}", flush=True)

    def say(self, text: str = "") -> None:
        print(f"   {text}" if text else "", flush=True)

    def block(self, text: str, indent: str = "     ") -> None:
        for line in text.rstrip("\n").splitlines():
            print(indent + self._style("2", line) if line.startswith("#") else indent + line, flush=True)

    def ok(self, text: str) -> None:
        print(f"   {self._style('32', 'ok')} {text}", flush=True)

    def fail(self, text: str) -> None:
        print(f"\n{self._style('1;31', 'FAILED:')} {text}", file=sys.stderr, flush=True)


def pick_etcd(wanted: str | None) -> Path:
    """The etcd labelled ``wanted`` (``3.4`` ... ``3.7``, see tests/harness/etcd_binaries.py), else the newest."""
    found = etcd_binaries.available()
    if wanted is None:
        newest = etcd_binaries.newest()
        if newest is None:
            raise DemoFailed("no etcd binary found", "run `make setup`")
        return newest
    if wanted not in found:
        raise DemoFailed(f"etcd {wanted} is not available; found: {', '.join(found) or 'none'}", "run `make setup`")
    return found[wanted]


def decision_line(stderr: str) -> str:
    """The agent's ``decision=...`` log line (without the ``etcd-aws-cluster: INFO:`` prefix)."""
    for line in stderr.splitlines():
        if "decision=" in line:
            return line.split("INFO: ", 1)[-1].strip()
    return "(no decision line in the agent's log)"


def narrate_actions(stderr: str) -> list[str]:
    """The agent's membership actions in log order, runs of identical retries collapsed into one line."""
    lines: list[str] = []
    retry: str | None = None
    count = 0

    def flush() -> None:
        if retry is not None:
            lines.append(f"  etcd answered {retry} ({count}x); the agent retried with backoff")
            if "unhealthy cluster" in retry:
                lines.append("  (etcd accepts a member change only once its peers have been connected for 5s,")
                lines.append("   and this cluster is only seconds old)")

    for raw in stderr.splitlines():
        line = raw.split("INFO: ", 1)[-1].strip()
        found = re.search(r"answered (.*); retrying$", line)
        if found:
            if found.group(1) != retry:
                flush()
                retry, count = found.group(1), 0
            count += 1
        elif "removing gone member" in line or "added this instance" in line:
            flush()
            retry = None
            lines.append(line)
    flush()
    return lines


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def run_agents(
    asg: SimulatedAsg, nodes: Sequence[Node], env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run the agent for every node at once (as instances booting together would); all must succeed."""
    procs = [(node, asg.start_agent(node, env=env)) for node in nodes]
    results: list[subprocess.CompletedProcess[str]] = []
    problems: list[str] = []
    deadline = time.monotonic() + AGENT_TIMEOUT
    for node, proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            asg.registry.stop(proc.pid)
            out, err = proc.communicate()
            who = f"{node.instance_id} ({node.ip})"
            problems.append(f"== agent for {who} timed out after {AGENT_TIMEOUT:.0f}s\n{tail(err)}")
            continue
        finally:
            asg.registry.forget(proc.pid)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        if proc.returncode != 0:
            problems.append(f"== agent for {node.instance_id} ({node.ip}) exited {proc.returncode}\n{tail(err)}")
    if problems:
        raise DemoFailed("the agent failed", "\n".join(problems))
    return results


def start_cluster(asg: SimulatedAsg, nodes: Sequence[Node], expected: int) -> list[dict[str, Any]]:
    for node in nodes:
        asg.start_etcd(node)
    try:
        return asg.wait_healthy(expected, timeout=HEALTHY_TIMEOUT)
    except (RuntimeError, TimeoutError) as exc:
        logs = "\n".join(f"== etcd log of {n.instance_id} ({n.ip})\n{n.etcd_log_tail(15)}" for n in nodes)
        raise DemoFailed("etcd did not become healthy", f"{exc}\n{logs}") from None


def members_table(members: list[dict[str, Any]], marks: dict[str, str] | None = None) -> str:
    marks = marks or {}
    rows = [("MEMBER ID", "NAME", "PEER URL", "CLIENT URL", "STARTED", "")]
    for member in sorted(members, key=lambda m: str(m.get("name") or "")):
        name = str(member.get("name") or "")
        rows.append(
            (
                f"{int(member['ID']):016x}",
                name or "(not started)",
                ",".join(member.get("peerURLs") or []),
                ",".join(member.get("clientURLs") or []) or "-",
                "yes" if name else "no",
                marks.get(name, ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def demo(out: Out, etcd: Path) -> None:
    version = etcd_binaries.version_of(etcd)
    out.step("Start moto (plays the Auto Scaling and EC2 APIs)")
    moto = MotoServer()
    asg: SimulatedAsg | None = None
    try:
        moto.start()
        out.ok(f"moto server at {moto.url}")
        out.step("Create a simulated ASG of 3 instances")
        asg = SimulatedAsg(moto.url, 3, etcd)
        _story(out, asg, etcd, version)
        _disaster(out, asg, etcd, moto.url)
        _refresh(out, asg)
        out.step("Clean up")
        count = sum(1 for n in [*asg.all_nodes, *asg.retired] if n.etcd_pid is not None)
        asg.close()
        moto.stop()
        out.ok(f"stopped {count} etcd processes, {len(asg.all_nodes) + len(asg.retired)} fake IMDS servers and moto")
    finally:  # on failure or Ctrl-C too; both are no-ops when already closed
        if asg is not None:
            asg.close()
        moto.stop()


def _story(out: Out, asg: SimulatedAsg, etcd: Path, version: str | None) -> None:
    nodes = asg.nodes
    out.say(f"ASG {asg.name}, desired capacity 3, etcd {version} ({etcd})")
    out.say(f"client port {asg.client_port}, peer port {asg.peer_port}; one fake IMDS and one IP per instance:")
    for node in nodes:
        out.say(f"  {node.instance_id}  {node.ip}  IMDS {node.imds.url}")

    out.step("Run the agent on all three instances at once (python -m etcd_aws_cluster)")
    started = time.monotonic()
    results = run_agents(asg, nodes)
    took = time.monotonic() - started
    for node, result in zip(nodes, results):
        out.say(f"{node.instance_id}: {decision_line(result.stderr)}")
    out.ok(f"3 env files written in {took:.2f}s (wall, all three agents, interpreter start included)")

    first = nodes[0]
    out.step(f"The env file the agent wrote for {first.instance_id}")
    out.block(first.env_file.read_text(encoding="utf-8"))

    out.step("Start etcd on each instance from its env file")
    members = start_cluster(asg, nodes, expected=3)
    out.ok(f"cluster healthy: {len(members)} started members")
    out.block(members_table(members))

    out.step(f"Write a key: {KEY}")
    value = f"written at {time.strftime('%H:%M:%S')} through {first.instance_id}"
    try:
        asg.put(KEY, value, node=first)
    except RuntimeError as exc:
        raise DemoFailed("could not write the key", f"{exc}\n{first.etcd_log_tail(15)}") from None
    out.ok(f"{KEY} = {value!r}")

    victim = nodes[-1]
    victim_ids = {str(m["ID"]) for m in members if m.get("name") == victim.instance_id}
    out.step(f"Terminate {victim.instance_id} ({victim.ip}) through the ASG; its etcd stops with it")
    new_nodes = asg.terminate(victim, replace=True)  # TerminateInstanceInAutoScalingGroup, then stops its etcd
    if len(new_nodes) != 1:
        raise DemoFailed(f"expected moto to launch one replacement, got {new_nodes}")
    replacement = new_nodes[0]
    out.say(f"etcd of {victim.instance_id} stopped; the member is still listed, its instance is gone")
    out.ok(f"moto launched the replacement {replacement.instance_id} ({replacement.ip})")

    out.step(f"Run the agent on the replacement {replacement.instance_id}")
    started = time.monotonic()
    result = run_agents(asg, [replacement])[0]
    took = time.monotonic() - started
    out.say(decision_line(result.stderr))
    for line in narrate_actions(result.stderr):
        out.say(line)
    out.ok(f"env file written in {took:.2f}s")

    out.step(f"Start etcd on {replacement.instance_id} and wait until the cluster is healthy")
    members = start_cluster(asg, [replacement], expected=3)
    names = {str(m.get("name")) for m in members}
    ids = {str(m["ID"]) for m in members}
    if victim.instance_id in names or victim_ids & ids:
        raise DemoFailed(f"dead member {victim.instance_id} is still in the member list", members_table(members))
    if replacement.instance_id not in names:
        raise DemoFailed(f"{replacement.instance_id} is not a started member", members_table(members))
    out.ok(f"cluster healthy: {len(members)} started members")
    out.block(members_table(members, {replacement.instance_id: "<- new (replacement)"}))
    gone = ", ".join(f"{int(i):016x}" for i in sorted(victim_ids)) or "?"
    out.say(f"removed: member {gone} ({victim.instance_id}, terminated instance)")

    out.step(f"Read {KEY} back from the new member {replacement.instance_id}")
    try:
        got = asg.get(KEY, node=replacement)
    except RuntimeError as exc:
        raise DemoFailed("could not read the key", f"{exc}\n{replacement.etcd_log_tail(15)}") from None
    if got != value:
        raise DemoFailed(f"{KEY} reads {got!r}, expected {value!r}")
    out.ok(f"{KEY} = {got!r}")


def _disaster(out: Out, asg: SimulatedAsg, etcd: Path, moto_url: str) -> None:
    """Act 2: every instance is lost; the replacements restore the last snapshot from S3 by themselves."""
    tool = etcd_binaries.snapshot_tool(etcd)
    if tool is None:
        raise DemoFailed(f"no etcdutl/etcdctl beside {etcd}", "run `make setup`")
    out.step(f"Act 2: backups. Create the S3 bucket {BACKUP_BUCKET} in moto")
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )
    s3.create_bucket(Bucket=BACKUP_BUCKET)
    backup_env = {"ETCD_AWS_CLUSTER_BACKUP_URL": BACKUP_URL, "ETCD_AWS_CLUSTER_ETCDUTL": str(tool)}
    out.ok(f"backup_url = {BACKUP_URL}, restore tool {tool}")

    node = asg.nodes[0]
    value = f"written at {time.strftime('%H:%M:%S')}, before the backup"
    out.step(f"Write {BACKUP_KEY} and back it up: etcd-aws-cluster backup (on {node.instance_id})")
    asg.put(BACKUP_KEY, value, node=node)
    result = asg.run_agent(node, "backup", timeout=AGENT_TIMEOUT, env=backup_env)
    if result.returncode != 0:
        raise DemoFailed("the backup failed", tail(result.stderr))
    out.block(result.stdout)
    out.ok(f"{BACKUP_KEY} = {value!r}; snapshot and cluster record in s3://{BACKUP_BUCKET}")

    out.step("Terminate every instance through the ASG (an AZ outage, a bad roll-out): all data is gone")
    old = list(asg.nodes)
    for gone in old:
        asg.stop_etcd(gone, kill=True)
    for gone in old:
        asg.terminate(gone, replace=True)
    new = asg.nodes
    out.ok(f"moto launched {len(new)} replacements: {', '.join(f'{n.instance_id} ({n.ip})' for n in new)}")

    out.step("Run the agent on the three replacements at once: they find the record and restore, untold")
    started = time.monotonic()
    results = run_agents(asg, new, env=backup_env)
    took = time.monotonic() - started
    for replacement, result in zip(new, results):
        out.say(f"{replacement.instance_id}: {decision_line(result.stderr)}")
        restored = [line.split("INFO: ", 1)[-1] for line in result.stderr.splitlines() if "restore: restored" in line]
        out.say(f"  {restored[0] if restored else '(no restore line)'}")
    out.ok(f"3 data dirs restored and env files written in {took:.2f}s")

    out.step("Start etcd on the replacements and read the key back")
    members = start_cluster(asg, new, expected=3)
    out.block(members_table(members))
    got = asg.get(BACKUP_KEY, node=new[-1])
    if got != value:
        raise DemoFailed(f"{BACKUP_KEY} reads {got!r} after the restore, expected {value!r}")
    out.ok(f"{BACKUP_KEY} = {got!r}: no instance of the old cluster is left, the data is")


def _lines(log: str, *needles: str) -> list[str]:
    return [line.split("INFO: ", 1)[-1] for line in log.splitlines() if any(n in line for n in needles)]


def _refresh(out: Out, asg: SimulatedAsg) -> None:
    """Act 3: an Instance Refresh, one instance at a time, held by the two lifecycle hooks, writes going on."""
    out.step("Act 3: a rolling refresh. Give the group its two lifecycle hooks")
    hooks.put_hook(asg.autoscaling, asg.name, "etcd-ready", hooks.LAUNCHING, heartbeat_timeout=60)
    hooks.put_hook(
        asg.autoscaling, asg.name, "etcd-leave", hooks.TERMINATING, heartbeat_timeout=60, default_result="CONTINUE"
    )
    out.ok("etcd-ready (launching, ABANDON) and etcd-leave (terminating, CONTINUE)")

    out.step("Replace every instance, one at a time, while a writer writes through any member")
    writer = Writer(asg).start()
    try:
        for old in list(asg.nodes):
            step = replace_one(asg, old, hooked=True, promote_after=PROMOTE_AFTER)
            learner = f"joins as a learner, promoted {PROMOTE_AFTER:.0f}s later"
            out.say(f"{old.instance_id} -> {step.new.instance_id} ({learner})")
            for line in _lines(step.leave_log, "removed this", "already left", "stopped etcd", "completed lifecycle"):
                out.say(f"  leave: {line}")
            for line in _lines(step.ready_log, "held with a heartbeat", "completed lifecycle"):
                out.say(f"  ready: {line}")
    finally:
        writer.stop()
    members = start_cluster(asg, [], expected=3)
    out.block(members_table(members))
    lost = writer.lost(asg.nodes[0])
    if lost:
        raise DemoFailed(f"{len(lost)} acknowledged writes are gone: {lost[:5]}")
    out.ok(
        f"every instance replaced; {len(writer.acknowledged)} writes acknowledged, none lost, "
        f"longest pause {writer.longest_gap:.1f}s (a leader's election)"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--etcd", choices=etcd_binaries.MATRIX, help="etcd release to run (default: the newest of the matrix)"
    )
    args = parser.parse_args(argv)

    out = Out()
    # SIGTERM (e.g. from a CI runner) unwinds like Ctrl-C, so the finally blocks stop every process.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    print("etcd-aws-cluster demo: a simulated 3-instance Auto Scaling group of real etcd processes on 127.0.0.0/8")
    try:
        etcd = pick_etcd(args.etcd)
        demo(out, etcd)
    except DemoFailed as exc:
        out.fail(str(exc))
        if exc.details:
            print(exc.details, file=sys.stderr)
        print(f"(after {out.elapsed():.1f}s; every process the demo started has been stopped)", file=sys.stderr)
        return 1
    except Exception as exc:  # a harness error: still a clear message, processes already stopped
        out.fail(f"unexpected error: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return 1
    except KeyboardInterrupt:
        out.fail(f"interrupted after {out.elapsed():.1f}s; every process the demo started has been stopped")
        return 130
    print(
        f"\nDone in {out.elapsed():.1f}s: bootstrap, replacement of an instance, restore after losing them all, "
        "a rolling refresh."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
