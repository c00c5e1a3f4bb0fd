"""Boot test of the .deb under a real systemd: `make boot-test` (not part of `make test`; about a minute).

A Debian bookworm root (mmdebstrap, cached in build/packaging/boot/rootfs.tar) with systemd, Debian's etcd-server
and our package boots in systemd-nspawn. The container shares this machine's network, so the agent inside reaches
the harness's moto server and fake IMDS on 127.0.0.0/8 (settings in /etc/default/etcd-aws-cluster, as a user
would set them). A collector unit inside records what happened and powers the container off. Checked:

1. a first boot whose agent fails (the instance metadata service answers 500) leaves etcd down: no one-node
   cluster on the distribution's defaults;
2. next boot: the agent runs sandboxed (the unit as shipped), finishes before etcd starts, writes
   /etc/sysconfig/etcd-cluster (0644, state "new"); etcd starts from it and answers as a one-member cluster;
   `dpkg -i` of the package on the running system (an upgrade) neither runs the agent again nor restarts etcd;
3. kill switch: with /etc/etcd-aws-cluster/disabled the agent is skipped and etcd still starts from the
   previous file and its data.

Usage: python packaging/boot_test.py DEB [--keep]   (root; needs systemd-container and mmdebstrap)
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.moto_server import MotoServer  # noqa: E402
from tests.harness.sim import SimulatedAsg  # noqa: E402

NAME = "etcd-aws-cluster"
CACHE = REPO / "build" / "packaging" / "boot"
INCLUDE = "systemd,systemd-sysv,dbus,python3,python3-boto3,python3-requests,python3-systemd,etcd-server"
BOOT_TIMEOUT = 150

# Runs inside the container after the agent and etcd, writes /boot-report.json, then the unit powers off.
COLLECTOR = r"""#!/usr/bin/python3
import json, os, stat, subprocess, urllib.request

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
    try:
        url = values["ETCD_ADVERTISE_CLIENT_URLS"].split(",")[0] + "/v3/cluster/member/list"
        request = urllib.request.Request(url, data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            report["members"] = json.load(answer).get("members", [])
    except Exception as exc:  # noqa: BLE001 - recorded for the host to report
        report["members_error"] = repr(exc)
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


def rootfs() -> Path:
    """The cached base root (a tarball made by mmdebstrap from this machine's apt sources)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / "rootfs.tar"
    stamp = CACHE / "rootfs.include"
    if not tarball.exists() or not stamp.exists() or stamp.read_text() != INCLUDE:
        log("building the base root with mmdebstrap (cached afterwards)")
        started = time.monotonic()
        run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={INCLUDE}", "bookworm", str(tarball)])
        stamp.write_text(INCLUDE)
        log(f"base root built in {time.monotonic() - started:.0f} s")
    return tarball


def nspawn(root: Path, *args: str, boot: bool = False, timeout: float = 120, console: Path | None = None) -> None:
    argv = ["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit"]
    if boot:
        argv += ["--boot", "--console=passive"]
    else:
        argv += ["--pipe", "--"]
    output = console.open("w") if console else None
    process = subprocess.Popen([*argv, *args], start_new_session=True, stdout=output, stderr=output)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"container still running after {timeout:.0f} s: stopping it")
        process.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise SystemExit(f"boot-test: FAILED: the container did not power off by itself (console: {console})") from None
    finally:
        if output:
            output.close()
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


def prepare(root: Path, deb: Path, asg: SimulatedAsg) -> None:
    node = asg.nodes[0]
    shutil.copy(deb, root / "root" / deb.name)
    nspawn(root, "dpkg", "-i", f"/root/{deb.name}")
    (root / "etc/hostname").write_text("boot-test\n")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("deb", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the container's root for a post-mortem")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("boot-test: needs root (systemd-nspawn)")
    deb = args.deb.resolve()
    tarball = rootfs()
    work = Path(tempfile.mkdtemp(prefix="boot-test-", dir=CACHE))
    root = work / "root"
    root.mkdir()
    started = time.monotonic()
    try:
        run(["tar", "-C", str(root), "-xf", str(tarball)])
        with MotoServer(log_dir=work) as moto, SimulatedAsg(moto.url, size=1, base_dir=work) as asg:
            node = asg.nodes[0]
            log(f"ASG {asg.name}: {node.instance_id} at {node.ip}, IMDS {node.imds.url}, moto {moto.url}")
            prepare(root, deb, asg)

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
            agent, etcd = report["agent"], report["etcd"]
            check(
                agent.get("Result") == "success" and agent.get("ExecMainStatus") == "0", "the agent succeeded", report
            )
            check(
                0 < int(agent["ExecMainExitTimestampMonotonic"]) <= int(etcd["ExecMainStartTimestampMonotonic"]),
                "the agent finished before etcd started",
                report,
            )
            env_file = report.get("env_file", "")
            check("ETCD_INITIAL_CLUSTER_STATE=new" in env_file, "it wrote the env file for a new cluster", report)
            check(f"ETCD_NAME={node.instance_id}" in env_file, "with this instance's name", report)
            check(report.get("env_file_mode") == "0o644", "readable by everyone (0644)", report)
            check("/etc/sysconfig/etcd-cluster" in etcd.get("EnvironmentFiles", ""), "etcd reads the file", report)
            check(etcd.get("ActiveState") == "active", "etcd started", report)
            names = [m.get("name") for m in report.get("members", [])]
            check(names == [node.instance_id], "etcd is a one-member cluster named after the instance", report)
            first_file = env_file
            reinstall = report["reinstall"]
            check(reinstall["rc"] == 0, "dpkg -i on the running system (an upgrade) worked", report)
            check(reinstall["before"] == reinstall["after"], "and neither re-ran the agent nor restarted etcd", report)
            (root / "root/reinstall.deb").unlink()

            (root / "etc" / NAME / "disabled").touch()
            report = boot(root, 3)
            check(report["agent"].get("ConditionResult") == "no", "the kill switch skipped the agent", report)
            check(report["etcd"].get("ActiveState") == "active", "etcd started anyway, from its data", report)
            check(report.get("env_file") == first_file, "the file is the previous boot's", report)
            (root / "etc" / NAME / "disabled").unlink()
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
