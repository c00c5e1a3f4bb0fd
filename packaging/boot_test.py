"""Boot test of each suite's .deb under a real systemd: `make boot-test` (also run by `make test` as root).

For each Debian suite given (bookworm, trixie), a root of that suite (mmdebstrap, cached outside the clone by
tests/packaging_helpers.base_root) with systemd, Debian's etcd-server and the suite's package boots in
systemd-nspawn. The container shares this machine's network, so the agent inside reaches
the harness's moto server and fake IMDS on 127.0.0.0/8 (settings in /etc/default/etcd-aws-cluster, as a user
would set them). A collector unit inside records what happened and powers the container off. Checked:

1. a first boot whose agent fails (the instance metadata service answers 500) leaves etcd down: no one-node
   cluster on the distribution's defaults;
2. next boot: the agent runs sandboxed (the unit as shipped), finishes before etcd starts, writes
   /etc/sysconfig/etcd-cluster (0644, state "new"); etcd starts from it and answers as a one-member cluster;
   `dpkg -i` of the package on the running system (an upgrade) neither runs the agent again nor restarts etcd;
3. kill switch: with /etc/etcd-aws-cluster/disabled the agent is skipped and etcd still starts from the
   previous file and its data;
4. a 3-instance group: three containers boot at once (each in a cgroup of its own), their agents form one new
   cluster, and every etcd answers with the same three members.

Usage: python packaging/boot_test.py SUITE=DEB [SUITE=DEB ...] [--keep]   (root; systemd-container, mmdebstrap)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.moto_server import MotoServer  # noqa: E402
from tests.harness.sim import Node, SimulatedAsg  # noqa: E402
from tests.packaging_helpers import base_root  # noqa: E402

NAME = "etcd-aws-cluster"
WORK = REPO / "build" / "packaging" / "boot"
BOOT_TIMEOUT = 150
CLUSTER_SIZE = 3
CLUSTER_TIMEOUT = 300

# Runs inside the container after the agent and etcd, writes /boot-report.json, then the unit powers off.
COLLECTOR = r"""#!/usr/bin/python3
import json, os, socket, stat, subprocess, time, urllib.request

# a group of containers: how many members to wait for, and a directory shared with the others (and the host)
EXPECTED = int(open("/etc/boot-test-expect").read()) if os.path.exists("/etc/boot-test-expect") else 1
SHARED = "/shared" if os.path.isdir("/shared") else None

def show(unit, *props):
    out = subprocess.run(["systemctl", "show", unit, "-p", ",".join(props)], capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

def journal(unit):
    return subprocess.run(["journalctl", "-b", "-u", unit, "-o", "cat", "--no-pager"],
                          capture_output=True, text=True).stdout

report = {
    "agent": show("etcd-aws-cluster.service", "ActiveState", "Result", "ExecMainStatus", "ConditionResult",
                  "ExecMainExitTimestampMonotonic", "StatusText", "NRestarts"),
    "etcd": show("etcd.service", "ActiveState", "Result", "EnvironmentFiles", "ExecMainStartTimestampMonotonic",
                 "After", "Wants"),
    "agent_log": journal("etcd-aws-cluster.service"),
    "etcd_log": journal("etcd.service")[-6000:],
}
path = "/etc/sysconfig/etcd-cluster"
if os.path.exists(path):
    report["env_file"] = open(path).read()
    report["env_file_mode"] = oct(stat.S_IMODE(os.stat(path).st_mode))
    values = dict(l.split("=", 1) for l in report["env_file"].splitlines() if l and not l.startswith("#"))
    deadline = time.monotonic() + 120
    while True:  # until every expected member has started (has a name), or the deadline
        try:
            url = values["ETCD_ADVERTISE_CLIENT_URLS"].split(",")[0] + "/v3/cluster/member/list"
            request = urllib.request.Request(url, data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=5) as answer:
                report["members"] = json.load(answer).get("members", [])
            report.pop("members_error", None)
        except Exception as exc:  # noqa: BLE001 - recorded for the host to report
            report["members_error"] = repr(exc)
        if len([m for m in report.get("members", []) if m.get("name")]) >= EXPECTED or time.monotonic() > deadline:
            break
        time.sleep(1)
if os.path.exists("/root/reinstall.deb"):  # an upgrade on the live system must not re-run the agent
    def state():
        return {
            "agent": show("etcd-aws-cluster.service", "InvocationID", "ActiveEnterTimestampMonotonic"),
            "etcd": show("etcd.service", "MainPID", "ActiveState"),
            "mtime": os.stat(path).st_mtime_ns if os.path.exists(path) else None,
        }
    before = state()
    done = subprocess.run(["dpkg", "-i", "/root/reinstall.deb"], capture_output=True, text=True)
    report["reinstall"] = {"rc": done.returncode, "output": done.stdout + done.stderr, "before": before,
                           "after": state()}
with open("/boot-report.json", "w") as handle:
    json.dump(report, handle, indent=1)
if SHARED:  # hand the report over, then keep etcd up until every container has reported (quorum for them)
    with open(f"{SHARED}/{socket.gethostname()}.json.tmp", "w") as handle:
        json.dump(report, handle, indent=1)
    os.rename(f"{SHARED}/{socket.gethostname()}.json.tmp", f"{SHARED}/{socket.gethostname()}.json")
    deadline = time.monotonic() + 120
    while len([f for f in os.listdir(SHARED) if f.endswith(".json")]) < EXPECTED and time.monotonic() < deadline:
        time.sleep(1)
"""

COLLECTOR_UNIT = """\
[Unit]
Description=boot test: record the agent's and etcd's state, then power off
After=etcd.service etcd-aws-cluster.service
Wants=etcd.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/boot-report

[Install]
WantedBy=multi-user.target
"""


def log(message: str) -> None:
    print(f"boot-test: {message}", flush=True)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, **kwargs)


def own_cgroup(name: str) -> list[Path]:
    """Cgroups of their own for one container: with no systemd on the host, containers that share one would have
    their systemds kill each other's units. Made here, joined by the nspawn process before it execs."""
    hierarchies = [Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified")]
    if (Path("/sys/fs/cgroup") / "cgroup.controllers").exists():  # a pure cgroup v2 host
        hierarchies = [Path("/sys/fs/cgroup")]
    made = [h / name for h in hierarchies if h.is_dir()]
    for cgroup in made:
        cgroup.mkdir(exist_ok=True)
    return made


def drop_cgroup(cgroups: list[Path]) -> None:
    for cgroup in cgroups:  # innermost first; a container's systemd leaves its own sub-cgroups
        for directory in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            directory.rmdir()
        cgroup.rmdir()


def nspawn_argv(root: Path, *args: str, boot: bool = False, binds: tuple[str, ...] = ()) -> list[str]:
    argv = ["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", *(f"--bind={b}" for b in binds)]
    if boot:
        return [*argv, "--boot", "--console=passive"]
    return [*argv, "--pipe", "--", *args]


def start(argv: list[str], cgroups: list[Path], console: Path | None) -> subprocess.Popen[bytes]:
    def join() -> None:
        for cgroup in cgroups:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    output = console.open("w") if console else None
    try:
        return subprocess.Popen(argv, start_new_session=True, stdout=output, stderr=output, preexec_fn=join)
    finally:
        if output:
            output.close()


def finish(process: subprocess.Popen[bytes], timeout: float, console: Path | None) -> int:
    try:
        return process.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        log(f"container still running after {timeout:.0f} s: stopping it")
        process.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise SystemExit(f"boot-test: FAILED: the container did not power off by itself (console: {console})") from None


def nspawn(root: Path, *args: str, boot: bool = False, timeout: float = 120, console: Path | None = None) -> None:
    cgroups = own_cgroup(f"boot-test-{os.getpid()}-{root.parent.name}-{root.name}")
    try:
        code = finish(start(nspawn_argv(root, *args, boot=boot), cgroups, console), timeout, console)
    finally:
        drop_cgroup(cgroups)
    if code != 0 and not boot:
        raise SystemExit(f"boot-test: FAILED: {' '.join(args)} exited {code} in the container")


def boot(root: Path, number: int) -> dict[str, Any]:
    report_file = root / "boot-report.json"
    report_file.unlink(missing_ok=True)
    started = time.monotonic()
    console = root.parent / f"console-{number}.log"
    nspawn(root, boot=True, timeout=BOOT_TIMEOUT, console=console)
    if not report_file.exists():
        print(console.read_text(errors="replace")[-6000:], file=sys.stderr)
        raise SystemExit("boot-test: FAILED: the collector wrote no report")
    report: dict[str, Any] = json.loads(report_file.read_text())
    log(f"booted and powered off in {time.monotonic() - started:.0f} s")
    return report


def check(condition: bool, what: str, report: dict[str, Any]) -> None:
    if not condition:
        print(json.dumps(report, indent=1), file=sys.stderr)
        raise SystemExit(f"boot-test: FAILED: {what}")
    log(f"ok: {what}")


def prepare(root: Path, deb: Path, asg: SimulatedAsg, node: Node, expect: int = 1) -> None:
    shutil.copy(deb, root / "root" / deb.name)
    nspawn(root, "dpkg", "-i", f"/root/{deb.name}")
    (root / f"root/{deb.name}").unlink()
    # each container a machine of its own: hostname (the collector's report name) and machine id
    (root / "etc/hostname").write_text(f"{node.instance_id}\n")
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (root / "etc/boot-test-expect").write_text(f"{expect}\n")
    # What a user puts in /etc/default/etcd-aws-cluster to point the agent at other endpoints; paths stay default.
    env = asg.agent_env(node)
    keep = {k: v for k, v in env.items() if k.startswith("AWS_")}
    keep["ETCD_AWS_CLUSTER_CLIENT_PORT"] = str(asg.client_port)
    keep["ETCD_AWS_CLUSTER_PEER_PORT"] = str(asg.peer_port)
    keep["ETCD_AWS_CLUSTER_LISTEN_LOOPBACK"] = "false"  # the host's 127.0.0.1:2379 is not the container's to take
    (root / "etc/default" / NAME).write_text("".join(f"{k}={v}\n" for k, v in sorted(keep.items())))
    collector = root / "usr/local/sbin/boot-report"
    collector.write_text(COLLECTOR)
    collector.chmod(0o755)
    (root / "etc/systemd/system/boot-report.service").write_text(COLLECTOR_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "boot-report.service").symlink_to("/etc/systemd/system/boot-report.service")
    # only what the test needs starts at boot
    for unit in ("getty.target", "console-getty.service", "systemd-timesyncd.service"):
        (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")


def one_node(suite: str, deb: Path, work: Path) -> None:
    """Scenarios 1-3: a failed first boot, a good one with an upgrade on the live system, the kill switch."""
    root = work / "root"
    run(["tar", "-C", str(root), "-xf", str(base_root(suite))])
    with MotoServer(log_dir=work) as moto, SimulatedAsg(moto.url, size=1, base_dir=work) as asg:
        node = asg.nodes[0]
        log(f"{suite}: ASG {asg.name}: {node.instance_id} at {node.ip}, IMDS {node.imds.url}, moto {moto.url}")
        prepare(root, deb, asg, node)

        node.imds.set_mode("status", 500)
        report = boot(root, 1)
        # Debian's etcd.service restarts (Restart=on-abnormal) on the missing file, and its Wants= starts
        # the agent again: the agent is retried until it succeeds or etcd's start limit is hit.
        check("status=3/" in report["agent_log"], "first boot: the agent failed (IMDS 500: exit 3)", report)
        check("env_file" not in report, "and wrote no file", report)
        check(report["etcd"].get("ActiveState") != "active", "so etcd did not start", report)
        check(not (root / "var/lib/etcd/default/member").exists(), "and made no data dir", report)
        node.imds.set_mode("v2")
        shutil.copy(deb, root / "root/reinstall.deb")  # the collector reinstalls it on the running system

        report = boot(root, 2)
        first_file = check_good_boot(report, node)
        reinstall = report["reinstall"]
        check(reinstall["rc"] == 0, "dpkg -i on the running system (an upgrade) worked", report)
        check(reinstall["before"] == reinstall["after"], "and neither re-ran the agent nor restarted etcd", report)
        (root / "root/reinstall.deb").unlink()

        (root / "etc" / NAME / "disabled").touch()
        report = boot(root, 3)
        check(report["agent"].get("ConditionResult") == "no", "the kill switch skipped the agent", report)
        check(report["etcd"].get("ActiveState") == "active", "etcd started anyway, from its data", report)
        check(report.get("env_file") == first_file, "the file is the previous boot's", report)


def check_good_boot(report: dict[str, Any], node: Node, members: int = 1) -> str:
    """A boot whose agent succeeded before etcd started from its file; returns the file."""
    agent, etcd = report["agent"], report["etcd"]
    check(agent.get("Result") == "success" and agent.get("ExecMainStatus") == "0", "the agent succeeded", report)
    check(
        0 < int(agent["ExecMainExitTimestampMonotonic"]) <= int(etcd["ExecMainStartTimestampMonotonic"]),
        "the agent finished before etcd started",
        report,
    )
    env_file: str = report.get("env_file", "")
    check("ETCD_INITIAL_CLUSTER_STATE=new" in env_file, "it wrote the env file for a new cluster", report)
    check(f"ETCD_NAME={node.instance_id}" in env_file, "with this instance's name", report)
    check(report.get("env_file_mode") == "0o644", "readable by everyone (0644)", report)
    check("/etc/sysconfig/etcd-cluster" in etcd.get("EnvironmentFiles", ""), "etcd reads the file", report)
    check(etcd.get("ActiveState") == "active", "etcd started", report)
    names = sorted(m.get("name", "") for m in report.get("members", []))
    check(len(names) == members and node.instance_id in names, f"etcd answers as one of {members} members", report)
    return env_file


def cluster(suite: str, deb: Path, work: Path) -> None:
    """Scenario 4: three instances boot at once and form one cluster."""
    shared = work / "shared"
    shared.mkdir()
    with MotoServer(log_dir=work) as moto, SimulatedAsg(moto.url, size=CLUSTER_SIZE, base_dir=work) as asg:
        nodes = asg.nodes
        log(f"{suite}: ASG {asg.name} of {CLUSTER_SIZE}: {', '.join(f'{n.instance_id} at {n.ip}' for n in nodes)}")
        roots = []
        for number, node in enumerate(nodes):
            root = work / f"node{number}"
            root.mkdir()
            run(["tar", "-C", str(root), "-xf", str(base_root(suite))])
            prepare(root, deb, asg, node, expect=CLUSTER_SIZE)
            roots.append(root)
        started = time.monotonic()
        running = []
        try:
            for number, root in enumerate(roots):
                cgroups = own_cgroup(f"boot-test-{os.getpid()}-{suite}-node{number}")
                console = work / f"console-node{number}.log"
                argv = nspawn_argv(root, boot=True, binds=(f"{shared}:/shared",))
                running.append((start(argv, cgroups, console), cgroups, console))
            for process, _, console in running:
                finish(process, CLUSTER_TIMEOUT - (time.monotonic() - started), console)
        finally:
            for process, cgroups, _ in running:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                drop_cgroup(cgroups)
        log(f"{CLUSTER_SIZE} containers booted and powered off in {time.monotonic() - started:.0f} s")
        ids = set()
        for node, (_, _, console) in zip(nodes, running):
            report_file = shared / f"{node.instance_id}.json"
            if not report_file.exists():
                print(console.read_text(errors="replace")[-6000:], file=sys.stderr)
                raise SystemExit(f"boot-test: FAILED: {node.instance_id} wrote no report")
            report = json.loads(report_file.read_text())
            check_good_boot(report, node, members=CLUSTER_SIZE)
            ids.add(tuple(sorted(m["ID"] for m in report["members"])))
        check(len(ids) == 1, f"all {CLUSTER_SIZE} etcds are members of one cluster", {"member ids": sorted(ids)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("debs", nargs="+", metavar="SUITE=DEB", help="e.g. trixie=dist/...~deb13_all.deb")
    parser.add_argument("--keep", action="store_true", help="keep the containers' roots for a post-mortem")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("boot-test: needs root (systemd-nspawn)")
    debs = {suite: Path(deb).resolve() for suite, _, deb in (d.partition("=") for d in args.debs)}
    started = time.monotonic()
    for suite, deb in debs.items():
        WORK.mkdir(parents=True, exist_ok=True)
        for scenario in (one_node, cluster):
            work = Path(tempfile.mkdtemp(prefix=f"boot-test-{suite}-", dir=WORK))
            (work / "root").mkdir()
            try:
                scenario(suite, deb, work)
            finally:
                if args.keep:
                    log(f"kept {work}")
                else:
                    shutil.rmtree(work, ignore_errors=True)
        log(f"{suite}: passed ({time.monotonic() - started:.0f} s so far)")
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
