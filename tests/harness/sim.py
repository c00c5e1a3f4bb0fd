"""``SimulatedAsg``: an AWS Auto Scaling Group of N "instances" on one machine.

Each instance of the ASG (in a moto server) gets a :class:`Node`: its own loopback IP (from moto), its own
fake IMDS serving that instance's identity, its own work dir (data dir, env file, lock file, logs) and,
when started, its own real etcd listening on ``<ip>:<client_port>`` / ``<ip>:<peer_port>``. The agent is run
for a node with :meth:`SimulatedAsg.run_agent`, which points it at moto and at the node's IMDS through the
standard environment variables.

What moto 5.2 does (verified on this machine with moto 5.2.5 in server mode; the tests rely on it):

* **IPs.** A VPC ``127.W.0.0/16`` with a subnet ``127.W.K.0/24`` is accepted, and instances launched into
  it get private IPs handed out *sequentially* from ``127.W.K.4`` (``.0``-``.3`` are reserved as on AWS):
  ``.4, .5, .6, ...``. Linux routes all of 127.0.0.0/8 to ``lo``, so etcd can bind every one of them.
  IPs of terminated instances are not handed out again in practice (moto only frees an IP when the
  Python object is garbage collected, and terminated instances stay listed), so a replacement gets a new
  IP. Overlapping VPCs (several ``127.W.0.0/16``) are accepted, so each ``SimulatedAsg`` makes its own VPC
  and picks its own subnet ``K`` (from a per-process counter) to keep IPs apart. ``W`` is 0 in a serial run
  and differs for each pytest-xdist worker (:mod:`tests.harness.workers`), so the workers of one run, each
  with its own moto handing out the same ``.4, .5, ...``, never meet.
* **Lifecycle states.** Every instance is ``InService`` / ``Healthy`` immediately after
  ``CreateAutoScalingGroup`` or a scale-out: moto never shows ``Pending``, ``Pending:Wait``,
  ``Terminating`` or ``Detaching`` (lifecycle hooks are stored but have no effect). ``EnterStandby`` gives
  ``Standby`` (and, without decrementing, moto launches a replacement at once, like AWS);
  ``ExitStandby`` gives ``InService`` and increments the desired capacity. Tests that need ``Pending`` or
  ``Terminating`` must fake it (e.g. via the fake IMDS ``target-lifecycle-state`` or a stubbed client).
* **Terminate and replacement.** ``TerminateInstanceInAutoScalingGroup(ShouldDecrementDesiredCapacity=False)``
  removes the instance from the group *synchronously* (EC2 state ``terminated``) and launches the
  replacement in the same call: the very next ``DescribeAutoScalingGroups`` already lists the replacement,
  ``InService``, with the next IP; ``DesiredCapacity`` is unchanged. With ``True`` the desired capacity
  drops by one and nothing is launched. Terminating via the EC2 API (``TerminateInstances``) also makes
  moto replace the instance.
* **Scaling.** ``SetDesiredCapacity`` / ``UpdateAutoScalingGroup(DesiredCapacity=...)`` launch or terminate
  instances synchronously. Which instances a scale-in removes is *not* predictable (moto rebuilds the
  instance list from a set); use ``terminate(node, replace=False)`` for a deterministic scale-in.
  moto does not validate desired against min/max, but AWS does, so the harness keeps them consistent.
* **Tag filters.** ``DescribeAutoScalingGroups(Filters=[...])`` works with ``tag:<key>``, ``tag-key`` and
  ``tag-value`` filters. Tags with ``PropagateAtLaunch`` are copied to the EC2 instances, and moto adds
  ``aws:autoscaling:groupName`` (plus ``aws:ec2launchtemplate:id``/``version``) to every instance.
* ``DescribeAutoScalingInstances`` returns ``AutoScalingGroupName``, ``LifecycleState``, ``HealthStatus``,
  ``AvailabilityZone`` and the launch template; instances are in the subnet's AZ (``us-east-1a`` here).
* ``POST /moto-api/reset`` drops everything; IP allocation then starts at ``.4`` again.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import requests
from botocore.config import Config

from tests.harness import etcd_binaries, workers
from tests.harness.fake_imds import FakeImds
from tests.harness.lifecycle_actions import target_state
from tests.harness.procs import ProcessRegistry, free_port

if TYPE_CHECKING:  # boto3-stubs (dev extra)
    from mypy_boto3_autoscaling import AutoScalingClient
    from mypy_boto3_autoscaling.type_defs import AutoScalingGroupTypeDef, InstanceTypeDef
    from mypy_boto3_ec2 import EC2Client

REGION = "us-east-1"
REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_ACCESS_KEY = "testing"
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
_subnet_counter = itertools.count()
_OPEN_SIMS: set[SimulatedAsg] = set()


@atexit.register
def _close_open_sims() -> None:  # runs before procs.py's hook (atexit is LIFO): dirs go too
    for asg in list(_OPEN_SIMS):
        with contextlib.suppress(Exception):
            asg.close()


def _next_subnet_octet() -> int:
    """Third octet for the next simulated subnet: 1..250, spread by PID so that separate runs (another clone's, a
    demo) rarely meet; the workers of one run never do, having each their own second octet."""
    return 1 + (os.getpid() * 37 + next(_subnet_counter)) % 250


def parse_env_file(path: Path) -> dict[str, str]:
    """Read ``KEY=VALUE`` lines the way systemd's ``EnvironmentFile=`` does for unquoted values.

    Blank lines and lines starting with ``#`` or ``;`` are skipped; whitespace around key and value is
    stripped; later assignments win. Quotes are not interpreted (the agent must not write any), and a line
    without ``=`` or with an invalid key raises ValueError, because systemd would ignore it silently.
    """
    result: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or not key.isascii():
            raise ValueError(f"{path}:{lineno}: not a KEY=VALUE line: {raw!r}")
        result[key] = value.strip()
    return result


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write ``KEY=VALUE`` lines (no quoting), as the agent does; for tests that bypass the agent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")


def _without(env: Mapping[str, str], prefixes: Sequence[str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(tuple(prefixes)) and k.lower() not in _PROXY_VARS}


@dataclass(eq=False)
class Node:
    """One simulated instance: identity, fake IMDS, work dir and (maybe) a running etcd."""

    instance_id: str
    ip: str
    imds: FakeImds
    workdir: Path
    client_port: int
    peer_port: int
    availability_zone: str = f"{REGION}a"
    lifecycle_state: str = "InService"
    etcd_pid: int | None = None
    etcd_paused: bool = False
    terminated: bool = False
    # This instance's etcd, if not the sim's (e.g. a replacement instance running a newer release)
    etcd_binary: Path | None = None

    @property
    def name(self) -> str:
        """The etcd member name used by :meth:`SimulatedAsg.write_static_env` (the instance id)."""
        return self.instance_id

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def env_file(self) -> Path:
        return self.workdir / "etcd-cluster.env"

    @property
    def lock_file(self) -> Path:
        return self.workdir / "lock"

    @property
    def metrics_file(self) -> Path:
        """Never the host's node_exporter directory: each node's own file, in its work dir."""
        return self.workdir / "etcd-aws-cluster.prom"

    @property
    def etcd_log(self) -> Path:
        return self.workdir / "etcd.log"

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{self.peer_port}"

    def etcd_log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.etcd_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no etcd log)"

    def __repr__(self) -> str:
        state = "terminated" if self.terminated else self.lifecycle_state
        return f"Node({self.instance_id}, {self.ip}, {state}, etcd_pid={self.etcd_pid})"


class SimulatedAsg:
    """An ASG of ``size`` instances in moto, each a :class:`Node` that can run the agent and a real etcd."""

    def __init__(
        self,
        moto_url: str,
        size: int = 3,
        etcd_binary: Path | str | None = None,
        base_dir: Path | str | None = None,
        client_port: int | None = None,
        peer_port: int | None = None,
        *,
        name: str | None = None,
        subnet_cidr: str | None = None,
        tags: Mapping[str, str] | None = None,
        registry: ProcessRegistry | None = None,
        etcd_env: Mapping[str, str] | None = None,
    ) -> None:
        """Create VPC, subnet, launch template and ASG (desired = ``size``) in moto, and a Node per instance.

        ``base_dir`` None: a temp dir that ``close()`` deletes; otherwise a sub-dir ``<base_dir>/<name>`` that
        is left in place for post-mortems (logs, env files), less the etcd data dirs.
        Ports None: a free pair, the same for every node.
        ``etcd_env`` is added to every etcd's environment (after the harness defaults, before the env file).
        """
        self.moto_url = moto_url.rstrip("/")
        binary = Path(etcd_binary) if etcd_binary is not None else etcd_binaries.newest()
        if binary is None:
            raise RuntimeError("no etcd binary available (see python -m tests.harness.etcd_binaries)")
        self.etcd_binary = binary
        self.etcd_version = etcd_binaries.version_of(binary)
        octet = _next_subnet_octet()
        self.subnet_cidr = subnet_cidr or f"127.{workers.second_octet()}.{octet}.0/24"
        self.vpc_cidr = str(ipaddress.ip_network(self.subnet_cidr).supernet(new_prefix=16))
        self.name = name or f"etcd-sim-{os.getpid()}-{octet}"
        self.tags = {"Name": self.name, "etcd-aws-cluster": self.name, **(tags or {})}
        self.etcd_env = dict(etcd_env or {})
        self._own_registry = registry is None
        self.registry = registry if registry is not None else ProcessRegistry()
        self._tmp: str | None = None
        if base_dir is None:
            self._tmp = tempfile.mkdtemp(prefix=f"{self.name}-")
            self.base_dir = Path(self._tmp)
        else:
            self.base_dir = Path(base_dir) / self.name
            self.base_dir.mkdir(parents=True, exist_ok=True)
        self.client_port = client_port or 0
        self.peer_port = peer_port or 0
        self._nodes: dict[str, Node] = {}
        self.retired: list[Node] = []
        self._closed = False
        _OPEN_SIMS.add(self)
        self._http = requests.Session()
        self._http.trust_env = False  # loopback only; never a proxy

        session = boto3.session.Session(
            aws_access_key_id=FAKE_ACCESS_KEY,
            aws_secret_access_key=FAKE_ACCESS_KEY,
            region_name=REGION,
        )
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
        self.ec2: EC2Client = session.client("ec2", endpoint_url=self.moto_url, config=config)
        self.autoscaling: AutoScalingClient = session.client("autoscaling", endpoint_url=self.moto_url, config=config)
        try:
            self._create_asg(size)
            nodes = self.refresh()
            ips = [n.ip for n in nodes]
            first = ips[0] if ips else "127.0.0.1"
            self.client_port = client_port or free_port(first, also_free_on=ips[1:])
            self.peer_port = peer_port or free_port(first, also_free_on=ips[1:], exclude=[self.client_port])
            for node in self._nodes.values():
                node.client_port, node.peer_port = self.client_port, self.peer_port
        except BaseException:
            self.close()
            raise

    # -- AWS side ---------------------------------------------------------------------------------------
    def _create_asg(self, size: int) -> None:
        vpc_id = self.ec2.create_vpc(CidrBlock=self.vpc_cidr)["Vpc"]["VpcId"]
        self.vpc_id: str = vpc_id
        self.subnet_id: str = self.ec2.create_subnet(
            VpcId=vpc_id, CidrBlock=self.subnet_cidr, AvailabilityZone=f"{REGION}a"
        )["Subnet"]["SubnetId"]
        self.launch_template_name = f"{self.name}-lt"
        self.ec2.create_launch_template(
            LaunchTemplateName=self.launch_template_name,
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
        )
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=self.name,
            LaunchTemplate={"LaunchTemplateName": self.launch_template_name, "Version": "$Latest"},
            MinSize=0,
            MaxSize=max(size, 1) * 3,
            DesiredCapacity=size,
            VPCZoneIdentifier=self.subnet_id,
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in self.tags.items()],
        )

    def describe(self) -> AutoScalingGroupTypeDef:
        """The ASG as moto describes it now."""
        groups = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])
        return groups["AutoScalingGroups"][0]

    @property
    def desired_capacity(self) -> int:
        return int(self.describe()["DesiredCapacity"])

    def refresh(self) -> list[Node]:
        """Re-read the ASG; create Nodes (with IMDS) for new instances, retire the ones that left.

        Returns the nodes that are new since the last refresh (oldest IP first).
        """
        instances = {i["InstanceId"]: i for i in self.describe()["Instances"]}
        for instance_id in [i for i in self._nodes if i not in instances]:
            self._retire(self._nodes.pop(instance_id))
        new_ids = [i for i in instances if i not in self._nodes]
        new: list[Node] = []
        if new_ids:
            ips: dict[str, str] = {}
            for reservation in self.ec2.describe_instances(InstanceIds=new_ids)["Reservations"]:
                for inst in reservation["Instances"]:
                    ips[inst["InstanceId"]] = inst["PrivateIpAddress"]
            for instance_id in sorted(new_ids, key=lambda i: ipaddress.ip_address(ips[i])):
                info = instances[instance_id]
                node = self._make_node(instance_id, ips[instance_id], info)
                self._nodes[instance_id] = node
                new.append(node)
        for instance_id, info in instances.items():
            node = self._nodes[instance_id]
            state = str(info["LifecycleState"])
            if state != node.lifecycle_state:
                node.lifecycle_state = state
                node.imds.lifecycle_state = target_state(state)
        return new

    def _make_node(self, instance_id: str, ip: str, info: InstanceTypeDef) -> Node:
        if not ipaddress.ip_address(ip).is_loopback:
            raise RuntimeError(f"moto gave {instance_id} the non-loopback IP {ip}; refusing to use it")
        workdir = self.base_dir / instance_id
        workdir.mkdir(parents=True, exist_ok=True)
        az, state = info["AvailabilityZone"], info["LifecycleState"]
        imds = FakeImds(instance_id, ip, region=REGION, availability_zone=az, lifecycle_state=target_state(state))
        return Node(
            instance_id=instance_id,
            ip=ip,
            imds=imds,
            workdir=workdir,
            client_port=self.client_port,
            peer_port=self.peer_port,
            availability_zone=az,
            lifecycle_state=state,
        )

    def _retire(self, node: Node) -> None:
        if node.etcd_pid is not None:
            self.stop_etcd(node)
        node.imds.stop()
        node.terminated = True
        node.lifecycle_state = "Terminated"
        self.retired.append(node)

    @property
    def nodes(self) -> list[Node]:
        """The InService instances (as of the last refresh), oldest first."""
        return [n for n in self._nodes.values() if n.lifecycle_state == "InService"]

    @property
    def all_nodes(self) -> list[Node]:
        """Every instance in the ASG (any lifecycle state, e.g. Standby), oldest first."""
        return list(self._nodes.values())

    def node(self, key: str) -> Node:
        """The node with this instance id or IP (also retired ones)."""
        for node in [*self._nodes.values(), *self.retired]:
            if key in (node.instance_id, node.ip):
                return node
        raise KeyError(key)

    def terminate(self, node: Node, replace: bool = True, *, crash: bool = False) -> list[Node]:
        """Terminate ``node`` through the ASG API; ``replace`` keeps the desired capacity, so moto launches
        a replacement. The node's etcd (SIGTERM, or SIGKILL with ``crash``) and IMDS are stopped.
        Returns the new nodes (the replacement)."""
        self.autoscaling.terminate_instance_in_auto_scaling_group(
            InstanceId=node.instance_id, ShouldDecrementDesiredCapacity=not replace
        )
        if node.etcd_pid is not None:
            self.stop_etcd(node, kill=crash)
        return self.refresh()

    def scale_to(self, n: int) -> list[Node]:
        """Set the desired capacity to ``n`` (raising MaxSize if needed); returns the new nodes.
        Instances removed by a scale-in are retired (etcd and IMDS stopped)."""
        group = self.describe()
        self.autoscaling.update_auto_scaling_group(
            AutoScalingGroupName=self.name,
            MinSize=min(int(group["MinSize"]), n),
            MaxSize=max(int(group["MaxSize"]), n),
            DesiredCapacity=n,
        )
        return self.refresh()

    def enter_standby(self, node: Node, decrement: bool = False) -> list[Node]:
        """Put ``node`` in Standby (its IMDS then says so too); returns new nodes (a replacement unless
        ``decrement``)."""
        self.autoscaling.enter_standby(
            AutoScalingGroupName=self.name,
            InstanceIds=[node.instance_id],
            ShouldDecrementDesiredCapacity=decrement,
        )
        return self.refresh()

    def exit_standby(self, node: Node) -> list[Node]:
        self.autoscaling.exit_standby(AutoScalingGroupName=self.name, InstanceIds=[node.instance_id])
        return self.refresh()

    # -- the agent --------------------------------------------------------------------------------------
    def agent_env(self, node: Node, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for running the agent as ``node``: no AWS_*/ETCD_AWS_CLUSTER_*/proxy variables from
        the caller; moto, fake credentials and the node's IMDS; node paths and the sim's ports."""
        env = _without(os.environ, ("AWS_", "ETCD_AWS_CLUSTER_"))
        env.update(
            {
                "AWS_ENDPOINT_URL": self.moto_url,
                "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": FAKE_ACCESS_KEY,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": node.imds.url,
                # hermetic: no ~/.aws config or credentials file can change regions, endpoints or profiles
                "AWS_CONFIG_FILE": "/nonexistent/aws-config",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
                "ETCD_AWS_CLUSTER_CONFIG": "/nonexistent/config.toml",
                "ETCD_AWS_CLUSTER_CLIENT_PORT": str(self.client_port),
                "ETCD_AWS_CLUSTER_PEER_PORT": str(self.peer_port),
                "ETCD_AWS_CLUSTER_LISTEN_LOOPBACK": "false",
                "ETCD_AWS_CLUSTER_DATA_DIR": str(node.data_dir),
                "ETCD_AWS_CLUSTER_LOCK_FILE": str(node.lock_file),
                "ETCD_AWS_CLUSTER_OUTPUT": str(node.env_file),
                "ETCD_AWS_CLUSTER_METRICS_FILE": str(node.metrics_file),
            }
        )
        pythonpath = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{pythonpath}" if pythonpath else str(REPO_ROOT)
        if extra:
            env.update(extra)
        return env

    def agent_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "etcd_aws_cluster", *args]

    def run_agent(
        self, node: Node, *args: str, timeout: float = 60, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the agent for ``node`` to completion (text output captured). ``env`` adds/overrides variables.
        Raises subprocess.TimeoutExpired (after stopping it) if it runs longer than ``timeout``."""
        return self.registry.run(
            self.agent_argv(*args), timeout=timeout, env=self.agent_env(node, env), cwd=node.workdir
        )

    def start_agent(
        self, node: Node, *args: str, env: Mapping[str, str] | None = None, log_path: Path | None = None
    ) -> subprocess.Popen[str]:
        """Start the agent for ``node`` without waiting (for concurrent runs); ``.communicate(timeout=...)``
        it. With ``log_path`` its stdout and stderr go to that file instead, to be read while it runs. It is
        registered, so ``close()`` stops it if it is still running."""
        return self.registry.start(
            self.agent_argv(*args), env=self.agent_env(node, env), cwd=node.workdir, log_path=log_path
        )

    # -- etcd -------------------------------------------------------------------------------------------
    def etcd_environment(
        self, node: Node, *, enable_v2: bool = False, extra_env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """What ``start_etcd`` runs etcd with: caller's environment minus ETCD_*/AWS_*/proxies, harness
        defaults (data dir, quiet zap logs, no fsync), ``etcd_env``, then the node's env file, then
        ``extra_env``."""
        env = _without(os.environ, ("ETCD", "AWS_"))
        env.update(
            {
                "ETCD_DATA_DIR": str(node.data_dir),
                "ETCD_LOGGER": "zap",
                "ETCD_LOG_LEVEL": "warn",
                "ETCD_UNSAFE_NO_FSYNC": "true",
            }
        )
        if enable_v2:
            env["ETCD_ENABLE_V2"] = "true"
        env.update(self.etcd_env)
        env.update(parse_env_file(node.env_file))
        if extra_env:
            env.update(extra_env)
        return env

    def start_etcd(self, node: Node, *, enable_v2: bool = False, extra_env: Mapping[str, str] | None = None) -> int:
        """Start etcd for ``node`` from its env file (see ``etcd_environment``) with the node's etcd binary, or
        the sim's; returns the PID. Does not wait for it to be healthy (use ``wait_healthy``)."""
        if node.terminated:
            raise RuntimeError(f"{node} is terminated")
        if node.etcd_pid is not None and self.registry.is_running(node.etcd_pid):
            raise RuntimeError(f"etcd already running for {node}")
        env = self.etcd_environment(node, enable_v2=enable_v2, extra_env=extra_env)
        binary = node.etcd_binary or self.etcd_binary
        with node.etcd_log.open("a", encoding="utf-8") as log:
            log.write(f"--- harness: starting {binary} ({etcd_binaries.version_of(binary)}) at {time.ctime()}\n")
        proc = self.registry.start([binary], log_path=node.etcd_log, env=env, cwd=node.workdir)
        node.etcd_pid = proc.pid
        node.etcd_paused = False
        return proc.pid

    def stop_etcd(self, node: Node, *, kill: bool = False) -> int | None:
        """Stop ``node``'s etcd (SIGTERM, or SIGKILL with ``kill``); returns its exit code."""
        pid, node.etcd_pid = node.etcd_pid, None
        node.etcd_paused = False
        if pid is None:
            return None
        return self.registry.kill(pid) if kill else self.registry.stop(pid)

    def pause_etcd(self, node: Node) -> None:
        """SIGSTOP ``node``'s etcd: it keeps its ports open but answers nothing (a hung peer)."""
        if node.etcd_pid is None:
            raise RuntimeError(f"etcd not running for {node}")
        self.registry.pause(node.etcd_pid)
        node.etcd_paused = True

    def resume_etcd(self, node: Node) -> None:
        if node.etcd_pid is None:
            raise RuntimeError(f"etcd not running for {node}")
        self.registry.resume(node.etcd_pid)
        node.etcd_paused = False

    def etcd_running(self, node: Node) -> bool:
        return node.etcd_pid is not None and self.registry.is_running(node.etcd_pid)

    def running_nodes(self) -> list[Node]:
        """Nodes whose etcd runs and is not paused."""
        return [n for n in self._nodes.values() if self.etcd_running(n) and not n.etcd_paused]

    def write_static_env(
        self, nodes: Sequence[Node] | None = None, state: str = "new", token: str | None = None
    ) -> None:
        """Write hand-made env files (no agent) for a cluster of ``nodes`` (default: all InService):
        ETCD_NAME = instance id, ETCD_INITIAL_CLUSTER sorted by name, listen/advertise URLs on the IPs."""
        members = sorted(nodes if nodes is not None else self.nodes, key=lambda n: n.name)
        initial = initial_cluster(members)
        for node in members:
            write_env_file(
                node.env_file,
                {
                    "ETCD_NAME": node.name,
                    "ETCD_INITIAL_CLUSTER": initial,
                    "ETCD_INITIAL_CLUSTER_STATE": state,
                    "ETCD_INITIAL_CLUSTER_TOKEN": token or self.name,
                    "ETCD_INITIAL_ADVERTISE_PEER_URLS": node.peer_url,
                    "ETCD_LISTEN_PEER_URLS": node.peer_url,
                    "ETCD_LISTEN_CLIENT_URLS": node.client_url,
                    "ETCD_ADVERTISE_CLIENT_URLS": node.client_url,
                },
            )

    def bootstrap_static(self, nodes: Sequence[Node] | None = None, timeout: float = 30) -> list[dict[str, Any]]:
        """Without the agent: write static env files, start etcd on ``nodes`` and wait until healthy."""
        chosen = list(nodes if nodes is not None else self.nodes)
        self.write_static_env(chosen)
        for node in chosen:
            self.start_etcd(node)
        return self.wait_healthy(len(chosen), timeout=timeout)

    # -- etcd client (v3 JSON gateway) ------------------------------------------------------------------
    def _post(self, node: Node, path: str, body: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        resp = self._http.post(f"{node.client_url}{path}", json=dict(body), timeout=timeout)
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    def _first_answer(self, node: Node | None, path: str, body: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        candidates = [node] if node is not None else self.running_nodes()
        errors: list[str] = []
        for candidate in candidates:
            try:
                return self._post(candidate, path, body, timeout)
            except (requests.RequestException, ValueError) as exc:
                errors.append(f"{candidate.ip}: {exc}")
        raise RuntimeError(f"no etcd answered {path}: {errors or 'no etcd running'}")

    def member_list(self, node: Node | None = None, timeout: float = 2.0) -> dict[str, Any]:
        """The raw answer of ``POST /v3/cluster/member/list`` (header incl. cluster_id, members)."""
        return self._first_answer(node, "/v3/cluster/member/list", {}, timeout)

    def members(self, node: Node | None = None, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Members (dicts with ID, name, peerURLs, clientURLs[, isLearner]) as seen by ``node`` or by the
        first running node that answers. An added-but-unstarted member has no name."""
        members: list[dict[str, Any]] = self.member_list(node, timeout).get("members", [])
        return members

    def member_names(self, node: Node | None = None) -> list[str]:
        """Sorted names of the started members."""
        return sorted(str(m["name"]) for m in self.members(node) if m.get("name"))

    def health(self, node: Node, timeout: float = 2.0) -> bool:
        try:
            resp = self._http.get(f"{node.client_url}/health", timeout=timeout)
            return resp.status_code == 200 and resp.json().get("health") == "true"
        except (requests.RequestException, ValueError):
            return False

    def wait_healthy(self, expected_count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until every running (not paused) etcd is healthy, all report the same cluster id and member
        list, and that list has exactly ``expected_count`` started members. Returns the members.
        Fails early if an etcd process has exited."""
        deadline = time.monotonic() + timeout
        problem = "not checked yet"
        while True:
            for node in self._nodes.values():
                if node.etcd_pid is not None and not self.registry.is_running(node.etcd_pid):
                    proc = self.registry.get(node.etcd_pid)
                    code = proc.returncode if proc is not None else None
                    raise RuntimeError(f"etcd of {node} exited with {code}:\n{node.etcd_log_tail()}")
            problem = self._health_problem(expected_count)
            if not problem:
                return self.members()
            if time.monotonic() >= deadline:
                logs = "\n".join(f"== {n}\n{n.etcd_log_tail(10)}" for n in self.running_nodes())
                raise TimeoutError(f"cluster not healthy after {timeout}s: {problem}\n{logs}")
            time.sleep(0.2)

    def _health_problem(self, expected_count: int) -> str:
        running = self.running_nodes()
        if not running:
            return "no etcd running"
        views: dict[str, tuple[str, frozenset[str]]] = {}
        for node in running:
            if not self.health(node):
                return f"{node.ip} not healthy"
            try:
                answer = self.member_list(node)
            except RuntimeError as exc:
                return str(exc)
            members = answer.get("members", [])
            started = [m for m in members if m.get("name")]
            if len(members) != expected_count or len(started) != expected_count:
                return f"{node.ip} sees {len(started)} started of {len(members)} members, want {expected_count}"
            views[node.ip] = (str(answer["header"]["cluster_id"]), frozenset(str(m["ID"]) for m in members))
        if len(set(views.values())) != 1:
            return f"nodes disagree on cluster id / members: {views}"
        return ""

    def put(self, key: str, value: str, node: Node | None = None, timeout: float = 5.0) -> None:
        """``etcdctl put`` through the JSON gateway."""
        self._first_answer(node, "/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, timeout)

    def get(self, key: str, node: Node | None = None, timeout: float = 5.0) -> str | None:
        """``etcdctl get`` (linearizable) through the JSON gateway; None if the key does not exist."""
        kvs = self._first_answer(node, "/v3/kv/range", {"key": _b64(key)}, timeout).get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    # -- teardown ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every etcd, agent and IMDS this sim started, delete the ASG, remove its temp dir."""
        if self._closed:
            return
        self._closed = True
        _OPEN_SIMS.discard(self)
        try:
            everyone = [*self._nodes.values(), *self.retired]
            # SIGKILL: the sim is being thrown away, and a SIGTERMed etcd leader whose peers are stopping too
            # spends seconds trying to transfer leadership.
            self.registry.stop_many([n.etcd_pid for n in everyone if n.etcd_pid is not None], sig=signal.SIGKILL)
            for node in everyone:
                node.etcd_pid, node.etcd_paused = None, False
            if self._own_registry:
                self.registry.close()  # agents still running
        finally:
            for node in [*self._nodes.values(), *self.retired]:
                node.imds.stop()
            with contextlib.suppress(Exception):
                self.autoscaling.delete_auto_scaling_group(AutoScalingGroupName=self.name, ForceDelete=True)
            for client in (self.ec2, self.autoscaling):
                with contextlib.suppress(Exception):
                    client.close()
            self._http.close()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
            else:
                self._remove_etcd_data()

    def _remove_etcd_data(self) -> None:
        """Delete data dirs (and moved-aside ``data.stale-*``), keeping logs: each etcd preallocates a 64 MB WAL."""
        for node in [*self._nodes.values(), *self.retired]:
            for path in node.workdir.glob(node.data_dir.name + "*"):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> SimulatedAsg:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def initial_cluster(nodes: Iterable[Node]) -> str:
    """``name=peer_url,...`` sorted by name: the ETCD_INITIAL_CLUSTER value for these nodes."""
    return ",".join(f"{n.name}={n.peer_url}" for n in sorted(nodes, key=lambda n: n.name))
