"""etcd with client TLS: the agent works with the right CA and client certificate, and names the file when not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness.fixtures import SimFactory
from tests.harness.sim import Node, SimulatedAsg, write_env_file
from tests.integration.helpers import decision

pytestmark = pytest.mark.integration


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def issue(directory: Path, ca: tuple[Path, Path], name: str, ip: str) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\n")
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key)]
        + ["-out", str(csr)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial"]
        + ["-days", "2", "-extfile", str(ext), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_node(sim: SimFactory, etcd_binary: Path, tmp_path: Path) -> tuple[SimulatedAsg, Node, dict[str, Path]]:
    asg = sim(1, etcd_binary)
    node = asg.nodes[0]
    ca = make_ca(tmp_path, "ca")
    other_ca = make_ca(tmp_path, "other-ca")
    server = issue(tmp_path, ca, "server", node.ip)
    client = issue(tmp_path, ca, "client", node.ip)
    client_url = f"https://{node.ip}:{asg.client_port}"
    write_env_file(
        node.env_file,
        {
            "ETCD_NAME": node.instance_id,
            "ETCD_INITIAL_CLUSTER": f"{node.instance_id}={node.peer_url}",
            "ETCD_INITIAL_CLUSTER_STATE": "new",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS": node.peer_url,
            "ETCD_LISTEN_PEER_URLS": node.peer_url,
            "ETCD_LISTEN_CLIENT_URLS": client_url,
            "ETCD_ADVERTISE_CLIENT_URLS": client_url,
            "ETCD_CERT_FILE": str(server[0]),
            "ETCD_KEY_FILE": str(server[1]),
            "ETCD_TRUSTED_CA_FILE": str(ca[0]),
            "ETCD_CLIENT_CERT_AUTH": "true",
        },
    )
    asg.start_etcd(node)
    files = {"ca": ca[0], "other_ca": other_ca[0], "cert": client[0], "key": client[1]}
    return asg, node, files


def agent(asg: SimulatedAsg, node: Node, **settings: Path | str) -> subprocess.CompletedProcess[str]:
    env = {"ETCD_AWS_CLUSTER_CLIENT_SCHEME": "https", "ETCD_AWS_CLUSTER_TIMEOUT": "20"}
    env.update({f"ETCD_AWS_CLUSTER_{k.upper()}": str(v) for k, v in settings.items()})
    return asg.run_agent(node, "--output", "-", env=env, timeout=60)


def wait_tls_up(asg: SimulatedAsg, node: Node, files: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    """Run the agent until its etcd answers it over TLS (decision member). Before that, a run that finds no
    answer rightly decides restart from the node's data."""
    import time

    for _ in range(50):
        result = agent(asg, node, ca_file=files["ca"], cert_file=files["cert"], key_file=files["key"])
        if result.returncode == 0 and decision(result.stderr) == "member":
            return result
        time.sleep(0.2)
    raise AssertionError(result.stderr)


@pytest.mark.etcd_matrix
def test_right_ca_and_client_certificate(tls_node: tuple[SimulatedAsg, Node, dict[str, Path]]) -> None:
    asg, node, files = tls_node
    result = wait_tls_up(asg, node, files)  # fails unless the member list came back over TLS
    assert f"ETCD_ADVERTISE_CLIENT_URLS=https://{node.ip}:{asg.client_port}" in result.stdout


def test_wrong_ca_names_the_file(tls_node: tuple[SimulatedAsg, Node, dict[str, Path]]) -> None:
    asg, node, files = tls_node
    wait_tls_up(asg, node, files)
    result = agent(asg, node, ca_file=files["other_ca"], cert_file=files["cert"], key_file=files["key"])
    assert result.returncode == 5, result.stderr
    assert f"ca_file={files['other_ca']}" in result.stderr.splitlines()[-1]


def test_missing_client_certificate_is_named(tls_node: tuple[SimulatedAsg, Node, dict[str, Path]]) -> None:
    asg, node, files = tls_node
    wait_tls_up(asg, node, files)
    result = agent(asg, node, ca_file=files["ca"])
    assert result.returncode == 5, result.stderr
    assert "no client certificate (cert_file/key_file)" in result.stderr.splitlines()[-1]
