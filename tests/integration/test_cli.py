"""The command as users run it: dry runs, stdout output, settings, and every error class with its exit code."""

from __future__ import annotations

import contextlib
import fcntl
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node, SimulatedAsg
from tests.integration.helpers import boot, decision, wait_for_exit, wait_for_log

pytestmark = pytest.mark.integration

OLD = "# a previous boot's file\nETCD_NAME=old\n"


def with_old_file(node: Node) -> None:
    node.env_file.parent.mkdir(parents=True, exist_ok=True)
    node.env_file.write_text(OLD)


def failed(asg: SimulatedAsg, node: Node, code: int, env: dict[str, str] | None = None, *args: str) -> str:
    """Run the agent expecting exit `code`; the old file must be untouched and stderr end in one error line."""
    with_old_file(node)
    result = asg.run_agent(node, *args, env=env, timeout=60)
    assert result.returncode == code, result.stderr
    assert node.env_file.read_text() == OLD
    errors = [line for line in result.stderr.splitlines() if "error (" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_help_explains_and_is_fast() -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "etcd_aws_cluster", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and "--dry-run" in result.stdout and "ETCD_AWS_CLUSTER_" in result.stdout
    assert time.monotonic() - started < 5  # generous: the benchmark measures the real figure


def test_dry_run_prints_the_plan_and_changes_nothing(sim: SimFactory) -> None:
    asg = sim(3)
    node = asg.nodes[0]
    result = asg.run_agent(node, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "# decision: new" in result.stdout
    assert f"ETCD_NAME={node.instance_id}" in result.stdout
    assert "ETCD_INITIAL_CLUSTER_STATE=new" in result.stdout
    assert not node.env_file.exists()


def test_output_to_stdout(sim: SimFactory) -> None:
    asg = sim(3)
    node = asg.nodes[1]
    result = asg.run_agent(node, "--output", "-")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    assert [line.split("=", 1)[0] for line in lines] == [
        "ETCD_NAME",
        "ETCD_INITIAL_CLUSTER_STATE",
        "ETCD_INITIAL_CLUSTER",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        "ETCD_ADVERTISE_CLIENT_URLS",
        "ETCD_LISTEN_PEER_URLS",
        "ETCD_LISTEN_CLIENT_URLS",
    ]
    assert not node.env_file.exists()


def test_asg_by_tag_and_by_name(sim: SimFactory) -> None:
    asg = sim(3)
    node = asg.nodes[0]
    by_tag = asg.run_agent(node, "--dry-run", env={"ETCD_AWS_CLUSTER_ASG_TAG": f"etcd-aws-cluster={asg.name}"})
    assert by_tag.returncode == 0, by_tag.stderr
    assert f"ASG {asg.name}" in by_tag.stderr
    code = failed(asg, node, 4, None, "--asg-name", "no-such-group")
    assert "no-such-group was not found" in code


def test_metadata_disabled_is_exit_3(sim: SimFactory) -> None:
    asg = sim(1)
    line = failed(asg, asg.nodes[0], 3, {"AWS_EC2_METADATA_DISABLED": "true"})
    assert "AWS_EC2_METADATA_DISABLED" in line


@pytest.mark.parametrize("mode", ["status", "hang"])
def test_broken_imds_is_exit_3_in_bounded_time(sim: SimFactory, mode: str) -> None:
    asg = sim(1)
    node = asg.nodes[0]
    node.imds.set_mode(mode, 500 if mode == "status" else None)
    started = time.monotonic()
    failed(asg, node, 3, {"ETCD_AWS_CLUSTER_IMDS_TIMEOUT": "0.5"})
    assert time.monotonic() - started < 10


def test_instance_outside_any_asg_is_exit_4(sim: SimFactory) -> None:
    asg = sim(1)
    node = asg.nodes[0]
    node.imds.document_overrides["instanceId"] = "i-0aaaaaaaaaaaaaaaa"
    assert "not in any Auto Scaling group" in failed(asg, node, 4)


def test_unreachable_aws_is_exit_4_in_bounded_time(sim: SimFactory) -> None:
    asg = sim(1)
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "ETCD_AWS_CLUSTER_AWS_MAX_ATTEMPTS": "2"}
    started = time.monotonic()
    failed(asg, asg.nodes[0], 4, env)
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("env", "word"),
    [
        ({"ETCD_AWS_CLUSTER_CLIENT_PORT": "0"}, "client_port"),
        ({"ETCD_AWS_CLUSTER_API": "v9"}, "api"),
        ({"ETCD_AWS_CLUSTER_CA_FILE": "/nonexistent/ca.pem"}, "/nonexistent/ca.pem"),
        ({"ETCD_AWS_CLUSTER_CERT_FILE": "/etc/hostname"}, "set together"),
    ],
)
def test_bad_settings_are_exit_2_naming_the_setting(sim: SimFactory, env: dict[str, str], word: str) -> None:
    asg = sim(1)
    assert word in failed(asg, asg.nodes[0], 2, env)


@pytest.fixture
def silent_peer(sim: SimFactory) -> Iterator[tuple[SimulatedAsg, Node]]:
    """A 3-node ASG where node 2's etcd port accepts connections and never answers."""
    asg = sim(3)
    node = asg.nodes[2]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((node.ip, asg.client_port))
    server.listen(8)
    yield asg, asg.nodes[0]
    server.close()


def test_never_new_while_a_peer_hangs_then_refuse_at_the_deadline(silent_peer: tuple[SimulatedAsg, Node]) -> None:
    asg, node = silent_peer
    env = {"ETCD_AWS_CLUSTER_TIMEOUT": "3", "ETCD_AWS_CLUSTER_PROBE_TIMEOUT": "0.5"}
    started = time.monotonic()
    line = failed(asg, node, 6, env)
    assert time.monotonic() - started < 8
    assert "gave up" in line and "etcd may be running" in line


def test_refuse_to_join_without_quorum(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    for victim in asg.nodes[1:]:
        asg.stop_etcd(victim, kill=True)
    replacements = [n for victim in list(asg.nodes[1:]) for n in asg.terminate(victim)]
    line = failed(asg, replacements[0], 6, {"ETCD_AWS_CLUSTER_TIMEOUT": "10"})
    assert "no quorum: 1 of 3" in line
    assert len(asg.members(asg.nodes[0])) == 3  # nothing was removed or added


@contextlib.contextmanager
def lock_held(path: Path) -> Iterator[None]:
    """Hold the agent's host lock from the test, as another run would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def test_a_second_run_on_one_host_waits_for_the_lock(sim: SimFactory) -> None:
    asg = sim(3)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    node = asg.nodes[0]
    with_old_file(node)
    log = node.workdir / "agent.log"
    with lock_held(node.lock_file):
        proc = asg.start_agent(node, log_path=log)
        wait_for_log(proc, log, "another run holds")
        assert proc.poll() is None  # still waiting: it has not decided or written
        assert node.env_file.read_text() == OLD
    err = wait_for_exit(proc, log, timeout=60)
    assert proc.returncode == 0, err
    assert "another run holds" in err and decision(err) == "member"
    assert err.index("another run holds") < err.index("decision=")


def test_a_run_that_never_gets_the_lock_is_exit_8(sim: SimFactory) -> None:
    asg = sim(3)
    node = asg.nodes[0]
    with lock_held(node.lock_file):
        line = failed(asg, node, 8, {"ETCD_AWS_CLUSTER_TIMEOUT": "3"})
    assert "error (lock)" in line and "until the deadline" in line


@pytest.mark.parametrize(("status", "code"), [(400, "Throttling"), (503, "ServiceUnavailable")])
def test_aws_throttling_and_5xx_are_retried_then_exit_4(sim: SimFactory, status: int, code: str) -> None:
    import http.server
    import threading

    hits: list[str] = []
    body = (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>slow down</Message></Error>"
        "<RequestId>1</RequestId></ErrorResponse>"
    ).encode()

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hits.append(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        asg = sim(1)
        env = {
            "AWS_ENDPOINT_URL_AUTO_SCALING": f"http://127.0.0.1:{server.server_address[1]}",
            "ETCD_AWS_CLUSTER_AWS_MAX_ATTEMPTS": "3",
        }
        started = time.monotonic()
        line = failed(asg, asg.nodes[0], 4, env)
        assert time.monotonic() - started < 30
        assert code in line
        assert len(hits) == 3  # botocore's standard retry mode, bounded by aws_max_attempts
    finally:
        server.shutdown()
        server.server_close()


def test_the_imds_token_is_never_logged(sim: SimFactory) -> None:
    asg = sim(3)
    node = asg.nodes[0]
    result = asg.run_agent(node, "--dry-run", "--verbose")
    assert result.returncode == 0, result.stderr
    tokens = node.imds.tokens_issued
    assert tokens, "the agent asked for no token"
    for token in tokens:
        assert token not in result.stderr and token not in result.stdout
