"""Packaging: the systemd units and drop-ins, the .deb and the .rpm (packaging/, issue 3).

Fast checks of the unit files run everywhere systemd's tools are; the package tests (marked integration) build
the packages once per session with packaging/packaging.mk, install, upgrade, remove and purge each suite's .deb
inside a fresh Debian root of that suite (systemd-nspawn; the roots are cached outside the clone), and install
the .rpm into a scratch root. Nothing is installed on the machine that runs the tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etcd_aws_cluster import __version__
from etcd_aws_cluster.app.settings import DEFAULT_DATA_DIRS, Settings
from tests.harness import promtool
from tests.packaging_helpers import (
    ALL_UNITS,
    DEBIAN_RELEASES,
    DROPINS,
    MAX_EXPOSURE,
    PACKAGING,
    REPO,
    STAND_IN_ETCD_UNIT,
    SYSTEMD,
    UNIT,
    clean_env,
    exposure,
    fresh_root,
    in_root,
    make,
    make_variable,
    parse_unit,
    run,
    single,
    snapshot,
    unit_root,
    values,
    verify,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAME = "etcd-aws-cluster"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_systemd_tools = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or shutil.which("systemctl") is None,
    reason="systemd-analyze/systemctl missing: this machine has no systemd package",
)
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a Debian machine: no dpkg")


def _unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


def _settings_defaults() -> dict[str, Any]:
    return {name: field.default for name, field in Settings.model_fields.items()}


def _effective_lock_file(unit: dict[str, list[tuple[str, str]]]) -> Path:
    """The lock the agent uses under the unit: the unit's ETCD_AWS_CLUSTER_LOCK_FILE, else the default."""
    for assignment in values(unit, "Service", "Environment"):
        key, _, value = assignment.partition("=")
        if key == "ETCD_AWS_CLUSTER_LOCK_FILE":
            return Path(value)
    return Path(_settings_defaults()["lock_file"])


def _writable_paths(unit: dict[str, list[tuple[str, str]]]) -> list[Path]:
    """What the unit's sandbox leaves writable. ProtectSystem=strict keeps /run writable (systemd 252: seen in
    `make boot-test`), like the API file systems."""
    paths = [Path(p.lstrip("-")) for p in values(unit, "Service", "ReadWritePaths")]
    paths += [Path("/run") / d for d in values(unit, "Service", "RuntimeDirectory")]
    if single(unit, "Service", "ProtectSystem") == "strict":
        paths.append(Path("/run"))
    return paths


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _scripts_never_start_or_stop(text: str) -> None:
    """Maintainer scripts must not start, restart or stop a unit: the agent runs only at boot, before etcd."""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        assert not re.search(r"\b(deb-systemd-invoke|invoke-rc\.d)\b", line), line
        assert not re.search(r"\bsystemctl\b.*\b(start|restart|try-restart|reload-or-restart|stop)\b", line), line
        assert "--now" not in line, line


# --- the unit and the drop-ins ---------------------------------------------------------------------------


def test_unit_runs_once_before_etcd_with_a_kill_switch() -> None:
    unit = _unit()
    assert single(unit, "Service", "Type") == "oneshot"
    assert single(unit, "Service", "RemainAfterExit") == "yes"
    assert {"etcd.service", "etcd2.service"} <= set(values(unit, "Unit", "Before"))
    assert "network-online.target" in values(unit, "Unit", "After")
    assert "network-online.target" in values(unit, "Unit", "Wants")
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]
    assert single(unit, "Unit", "ConditionPathExists") == "!/etc/etcd-aws-cluster/disabled"
    assert single(unit, "Service", "SyslogIdentifier") == NAME
    assert single(unit, "Service", "EnvironmentFile") == "-/etc/default/etcd-aws-cluster"
    assert single(unit, "Service", "ExecStart") == f"/usr/bin/{NAME}"
    assert single(unit, "Unit", "Documentation") == f"man:{NAME}(8)"


def test_unit_start_timeout_covers_the_agents_deadline() -> None:
    timeout = single(_unit(), "Service", "TimeoutStartSec")
    assert re.fullmatch(r"\d+", timeout), f"TimeoutStartSec={timeout}: want plain seconds, and finite"
    assert int(timeout) >= _settings_defaults()["timeout"] + 30


def test_unit_lets_the_agent_write_its_file_the_etcd_data_dir_and_its_lock() -> None:
    unit = _unit()
    assert single(unit, "Service", "ProtectSystem") == "strict"
    writable = _writable_paths(unit)
    assert _under(Path(_settings_defaults()["output"]).parent, writable)
    for data_dir in DEFAULT_DATA_DIRS:
        assert _under(data_dir, writable), data_dir
    lock = _effective_lock_file(unit)
    assert _under(lock.parent, writable), f"the agent's lock {lock} is read-only in the unit's sandbox {writable}"
    assert _under(Path("/etc/sysconfig"), writable) and not _under(Path("/etc"), writable)


@pytest.mark.parametrize(
    "name",
    [
        "etcd-aws-cluster.service",
        "etcd-aws-cluster-backup.service",
        "etcd-aws-cluster-backup-follow.service",
        "etcd-aws-cluster-verify.service",
        "etcd-aws-cluster-reconcile.service",
        "etcd-aws-cluster-leave.service",
        "etcd-aws-cluster-ready.service",
    ],
)
def test_units_of_commands_that_record_metrics_may_write_the_metrics_file(name: str) -> None:
    unit = parse_unit((SYSTEMD / name).read_text())
    assert single(unit, "Service", "ProtectSystem") == "strict"
    metrics_dir = Path(_settings_defaults()["metrics_file"]).parent
    assert _under(metrics_dir, _writable_paths(unit)), f"{name}: {metrics_dir} is read-only in its sandbox"
    # optional ('-'): a host without node_exporter has no such directory, and the unit must still start
    assert f"-{metrics_dir}" in " ".join(values(unit, "Service", "ReadWritePaths")).split()


def test_example_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    rules = PACKAGING / "prometheus" / "etcd-aws-cluster.rules.yml"
    checked = promtool.run("check", "rules", rules)
    assert checked.returncode == 0 and "SUCCESS: 6 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool.run("test", "rules", rules.with_name("etcd-aws-cluster.rules.test.yml"), cwd=rules.parent)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_dropins_order_etcd_after_the_agent_and_make_its_file_mandatory() -> None:
    texts = set()
    for etcd_unit, path in DROPINS.items():
        dropin = parse_unit(path.read_text())
        assert values(dropin, "Unit", "After") == [f"{NAME}.service"], etcd_unit
        assert values(dropin, "Unit", "Wants") == [f"{NAME}.service"], etcd_unit
        # Requires=/BindsTo= would stop etcd when the agent's unit is stopped or its package removed.
        for key in ("Requires", "BindsTo", "PartOf", "Requisite"):
            assert not values(dropin, "Unit", key), (etcd_unit, key)
        # No '-': on a first boot whose agent failed, etcd must not start a one-node cluster on defaults.
        assert single(dropin, "Service", "EnvironmentFile") == _settings_defaults()["output"]
        texts.add(json.dumps(dropin))
    assert len(texts) == 1, "the etcd.service and etcd2.service drop-ins differ"


@needs_systemd_tools
def test_units_and_dropins_pass_systemd_analyze_verify_with_nothing_on_stderr(tmp_path: Path) -> None:
    units = {
        **{name: SYSTEMD / name for name in ALL_UNITS},
        "etcd.service": STAND_IN_ETCD_UNIT,
        "etcd2.service": STAND_IN_ETCD_UNIT.replace("%p", "etcd2"),  # a unit of its own, as on Container Linux
        **{f"{etcd}.d/{path.name}": path for etcd, path in DROPINS.items()},
    }
    root = unit_root(tmp_path, units, executables=[f"/usr/bin/{NAME}", "/usr/bin/etcd"])
    for name in (*ALL_UNITS, "etcd.service", "etcd2.service"):
        result = verify(name, root)
        assert (result.returncode, result.stderr) == (0, ""), f"{name}:\n{result.stderr}"


def test_every_unit_file_is_packaged() -> None:
    shipped = {p.name for p in SYSTEMD.iterdir() if p.suffix in (".service", ".timer", ".socket", ".path")}
    assert shipped == set(ALL_UNITS), "add new units to ALL_UNITS, debian/rules and the spec"


@needs_systemd_tools
def test_verify_reads_the_dropins(tmp_path: Path) -> None:
    """Guards the test above: in such a root, verify does read etcd.service.d/ and reports unknown keys."""
    root = unit_root(
        tmp_path,
        {"etcd.service": STAND_IN_ETCD_UNIT, "etcd.service.d/99-bogus.conf": "[Service]\nNoSuchKey=1\n"},
        executables=["/usr/bin/etcd"],
    )
    result = verify("etcd.service", root)
    assert "NoSuchKey" in result.stderr


@needs_systemd_tools
def test_verify_reports_a_missing_executable(tmp_path: Path) -> None:
    """Guards the test above too: without the stub executables, verify fails and names the missing command."""
    root = unit_root(tmp_path, {f"{NAME}.service": UNIT})
    result = verify(f"{NAME}.service", root)
    assert result.returncode != 0
    assert f"Command /usr/bin/{NAME} is not executable" in result.stderr


@needs_systemd_tools
@pytest.mark.parametrize("name", [n for n in ALL_UNITS if n.endswith(".service")])
def test_unit_security_exposure_is_ok(name: str) -> None:
    score, report = exposure(SYSTEMD / name)
    assert score <= MAX_EXPOSURE, report
    gate = run(
        ["systemd-analyze", "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}", "--no-pager"]
        + [SYSTEMD / name]
    )
    assert gate.returncode == 0, gate.stdout


@needs_systemd_tools
def test_offline_enable_creates_the_wants_link_and_disable_removes_it(tmp_path: Path) -> None:
    root = unit_root(tmp_path, {f"{NAME}.service": UNIT}, executables=[f"/usr/bin/{NAME}"])
    links_before = {p for p in (root / "etc").rglob("*") if p.is_symlink()}
    run(["systemctl", f"--root={root}", "enable", f"{NAME}.service"], check=True)
    link = root / "etc/systemd/system/multi-user.target.wants" / f"{NAME}.service"
    assert os.readlink(link) == f"/usr/lib/systemd/system/{NAME}.service"
    assert {p for p in (root / "etc").rglob("*") if p.is_symlink()} - links_before == {link}
    state = run(["systemctl", f"--root={root}", "is-enabled", f"{NAME}.service"])
    assert state.stdout.strip() == "enabled"
    run(["systemctl", f"--root={root}", "disable", f"{NAME}.service"], check=True)
    assert not os.path.lexists(link)


# --- what the packages ship -------------------------------------------------------------------------------


def test_config_example_lists_every_setting_with_its_default() -> None:
    text = (PACKAGING / "config.toml").read_text()
    assert all(line.startswith("#") or not line.strip() for line in text.splitlines()), "all commented out"
    settings = tomllib.loads("\n".join(m.group(1) for m in re.finditer(r"^#(\w+ = .*)$", text, re.M)))
    assert set(settings) == set(Settings.model_fields)
    loaded = Settings(**settings)  # extra="forbid": a misspelt key fails here
    for name, default in _settings_defaults().items():
        assert getattr(loaded, name) == default, f"config.toml shows {name} = {settings[name]!r}, default {default!r}"


def test_config_example_is_generated_from_the_settings_model() -> None:
    result = run([sys.executable, PACKAGING / "gen_config.py"], check=True)
    assert (PACKAGING / "config.toml").read_text() == result.stdout, (
        "packaging/config.toml is stale: make packaging-config"
    )


# What each S3 client call in s3.py and multipart.py needs (PutObject covers a multipart upload's create, parts
# and completion; AbortMultipartUpload is its own action; head_object: GetObject).
S3_CALL_ACTIONS = {
    "create_multipart_upload": {"s3:PutObject"},
    "upload_part": {"s3:PutObject"},
    "complete_multipart_upload": {"s3:PutObject"},
    "abort_multipart_upload": {"s3:AbortMultipartUpload"},
    "head_object": {"s3:GetObject"},
    "get_object": {"s3:GetObject"},
    "put_object": {"s3:PutObject"},
    "delete_objects": {"s3:DeleteObject"},
    "list_objects_v2": {"s3:ListBucket"},
}


def test_iam_policy_allows_exactly_the_calls_the_agent_makes() -> None:
    source = (REPO / "etcd_aws_cluster" / "adapters" / "aws.py").read_text()
    calls = set(re.findall(r"self\._(autoscaling|ec2)\.(?:get_paginator\(\")?(\w+)", source)) - {
        ("autoscaling", "get_paginator"),
        ("ec2", "get_paginator"),
    }
    assert calls, "no AWS calls found in etcd_aws_cluster/aws.py"
    wanted = {f"{service}:{''.join(w.title() for w in call.split('_'))}" for service, call in calls}
    adapters = REPO / "etcd_aws_cluster" / "adapters"
    s3_calls = set(re.findall(r"self\._s3\.(?:get_paginator\(\")?(\w+)", (adapters / "s3.py").read_text()))
    s3_calls |= set(re.findall(r"\bs3\.(\w+)\(", (adapters / "multipart.py").read_text()))
    assert s3_calls == set(S3_CALL_ACTIONS), "a new S3 call: add it and its IAM actions to S3_CALL_ACTIONS"
    wanted |= {action for actions in S3_CALL_ACTIONS.values() for action in actions}
    cloudwatch_calls = set(
        re.findall(r"client\.(\w+)\(", (REPO / "etcd_aws_cluster" / "adapters" / "cloudwatch.py").read_text())
    )
    assert cloudwatch_calls == {"put_metric_data"}, "a new CloudWatch call: add its IAM action to the policy"
    wanted |= {"cloudwatch:PutMetricData"}
    policy = json.loads((PACKAGING / "iam-policy.json").read_text())
    granted = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert granted == wanted
    for statement in policy["Statement"]:
        if "autoscaling:CompleteLifecycleAction" in statement["Action"]:  # the one write to the group: its own only
            assert statement["Resource"] == "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/ASG_NAME"
        if statement["Action"] == ["cloudwatch:PutMetricData"]:  # no resource-level permission: by namespace
            assert statement["Resource"] == "*"
            assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "NAMESPACE"}}
        if any(action.startswith("s3:") for action in statement["Action"]):
            assert statement["Resource"].startswith("arn:aws:s3:::BUCKET"), "S3 access is scoped to the bucket"
            if statement["Action"] == ["s3:ListBucket"]:
                assert statement["Condition"] == {"StringLike": {"s3:prefix": ["PREFIX/*"]}}
            else:
                assert statement["Resource"] == "arn:aws:s3:::BUCKET/PREFIX/*"


def _lock_pins(path: Path) -> dict[str, str]:
    text = path.read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", text, re.M))
    for requirement in re.split(r"\n(?=[A-Za-z])", text):
        if re.match(r"[A-Za-z]", requirement):
            assert "--hash=sha256:" in requirement, f"{path.name}: no hash for {requirement.split()[0]}"
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins.items()}


def test_lock_files_pin_by_hash_what_each_package_bundles() -> None:
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    deb = _lock_pins(PACKAGING / "debian" / "requirements.lock")
    rpm = _lock_pins(PACKAGING / "rpm" / "requirements.lock")

    # The .rpm bundles every runtime dependency but systemd-python (the distribution's python3-systemd).
    for name, requirement in requirements.items():
        if name != "systemd-python":
            assert name in rpm, name
            assert requirement.specifier.contains(rpm[name], prereleases=True), (name, rpm[name])
    assert rpm["urllib3"].startswith("1."), "botocore on Python 3.9 needs urllib3 < 2: resolve with Python 3.9"
    # The .deb bundles only the pydantic-2 stack; boto3 and requests are Debian's (security updates).
    assert requirements["pydantic-settings"].specifier.contains(deb["pydantic-settings"])
    assert {"pydantic", "pydantic-core"} <= set(deb)
    assert not {"boto3", "botocore", "requests", "urllib3", "certifi", "systemd-python", "zstandard"} & set(deb)


# --- the agent's wheel, which both packages install --------------------------------------------------------


@pytest.mark.integration
def test_agent_wheel_holds_every_module_of_the_source_tree() -> None:
    make("packaging-app-wheel")
    (wheel,) = (REPO / "build" / "packaging" / "app").glob("etcd_aws_cluster-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.endswith(".py")}
    sources = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "etcd_aws_cluster").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert sorted(sources - shipped) == [], (
        "pyproject.toml's [tool.setuptools] leaves these out of the wheel (and so out of both packages and of "
        '`pip install .`); list every package, e.g. [tool.setuptools.packages.find] include = ["etcd_aws_cluster*"]'
    )


# --- the .debs: one per Debian suite, installed, upgraded and purged inside Debian roots of that suite ---------

SUITES = tuple(DEBIAN_RELEASES)
needs_nspawn = pytest.mark.skipif(
    not IS_ROOT or shutil.which("systemd-nspawn") is None or shutil.which("mmdebstrap") is None,
    reason="Debian roots need root, systemd-nspawn and mmdebstrap (`make packaging-deps` installs them)",
)


def built(target: str, variable: str, *variables: str) -> Path:
    """`make <target>` (a no-op when its inputs did not change), and the package file it names in `variable`."""
    started = time.monotonic()
    make(target, *variables)
    path = REPO / make_variable(variable)
    assert path.is_file()
    print(f"make {target} {' '.join(variables)}: {time.monotonic() - started:.1f} s, {path.stat().st_size // 1024} KiB")
    return path


@pytest.fixture(scope="session")
def deb_files() -> dict[str, Path]:
    """Each suite's .deb, built once per session by `make deb SUITE=...`."""
    return {suite: built("deb", f"PKG_DEB_FILE_{suite.upper()}", f"SUITE={suite}") for suite in SUITES}


def _deb_field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", deb, name], check=True).stdout.strip()


@pytest.mark.integration
@needs_dpkg
def test_make_deb_names_each_file_after_its_suite(deb_files: dict[str, Path]) -> None:
    version = make_variable("PKG_VERSION")
    bookworm, trixie = deb_files["bookworm"], deb_files["trixie"]
    assert bookworm.name == f"{NAME}_{version}-1~deb12_{make_variable('PKG_DEB_ARCH')}.deb"
    assert trixie.name == f"{NAME}_{version}-1~deb13_all.deb"
    assert make_variable("PKG_DEB_FILES").split() == [str(p.relative_to(REPO)) for p in (bookworm, trixie)]
    # a Debian 12 -> 13 upgrade replaces the bookworm build with the trixie one
    newer = run(["dpkg", "--compare-versions", _deb_field(trixie, "Version"), "gt", _deb_field(bookworm, "Version")])
    assert newer.returncode == 0


def _common_deb_checks(deb: Path, unit_dir: str, tmp_path: Path) -> str:
    assert _deb_field(deb, "Package") == NAME
    assert "python3-systemd" in _deb_field(deb, "Depends") + _deb_field(deb, "Recommends")
    listing = run(["dpkg-deb", "-c", deb], check=True).stdout
    for path in (
        f"./usr/bin/{NAME}",
        *(f".{unit_dir}/{unit}" for unit in ALL_UNITS),
        f".{unit_dir}/etcd.service.d/10-etcd-aws-cluster.conf",
        f".{unit_dir}/etcd2.service.d/10-etcd-aws-cluster.conf",
        f"./usr/lib/tmpfiles.d/{NAME}.conf",
        f"./etc/{NAME}/config.toml",
        f"./etc/{NAME}/config.d/",
        f"./etc/default/{NAME}",
        f"./usr/share/man/man8/{NAME}.8.gz",
        f"./usr/share/doc/{NAME}/examples/iam-policy.json",
        f"./usr/share/doc/{NAME}/examples/etcd-aws-cluster.rules.yml",
        f"./usr/share/doc/{NAME}/copyright",
    ):
        assert re.search(rf" {re.escape(path)}( |$)", listing, re.M), path
    assert not re.search(r"/(boto3|botocore|requests|urllib3|bin)/", listing.replace("./usr/bin/", ""))
    control = tmp_path / "DEBIAN"
    run(["dpkg-deb", "-e", deb, control], check=True)
    conffiles = (control / "conffiles").read_text().split()
    assert sorted(conffiles) == [f"/etc/default/{NAME}", f"/etc/{NAME}/config.toml"]
    for script in ("preinst", "postinst", "prerm", "postrm"):
        if (control / script).exists():
            _scripts_never_start_or_stop((control / script).read_text())
    return listing


@pytest.mark.integration
@needs_dpkg
def test_bookworm_deb_bundles_the_pydantic_2_stack_for_python_311(deb_files: dict[str, Path], tmp_path: Path) -> None:
    deb = deb_files["bookworm"]
    listing = _common_deb_checks(deb, "/lib/systemd/system", tmp_path)
    assert _deb_field(deb, "Version").endswith("~deb12")
    depends = _deb_field(deb, "Depends")
    for wanted in ("python3-boto3", "python3-requests", "python3-zstandard (>= 0.20)", "python3 (<< 3.12)", "libc6"):
        assert wanted in depends, depends
    assert "pydantic" not in depends, "bookworm's python3-pydantic is 1.10: the 2.x stack is bundled"
    assert "python3-systemd" in _deb_field(deb, "Recommends")
    for path in ("etcd_aws_cluster/cli.py", "pydantic_settings/__init__.py", "pydantic/__init__.py"):
        assert f" ./usr/lib/{NAME}/{path}" in listing, path


@pytest.mark.integration
@needs_dpkg
def test_trixie_deb_depends_on_debians_packages_and_bundles_nothing(deb_files: dict[str, Path], tmp_path: Path) -> None:
    deb = deb_files["trixie"]
    listing = _common_deb_checks(deb, "/usr/lib/systemd/system", tmp_path)
    assert _deb_field(deb, "Version").endswith("~deb13")
    assert _deb_field(deb, "Architecture") == "all"
    depends = [d.strip() for d in _deb_field(deb, "Depends").split(",")]
    for wanted in (
        "python3-boto3 (>= 1.26)",
        "python3-pydantic (>= 2.10)",
        "python3-pydantic-settings (>= 2.8)",
        "python3-requests (>= 2.28)",
        "python3-systemd",
        "python3-zstandard (>= 0.20)",
        "python3:any",
    ):
        assert wanted in depends, depends
    assert " ./usr/lib/python3/dist-packages/etcd_aws_cluster/cli.py" in listing
    assert not re.search(r" \./(lib|usr/lib/etcd-aws-cluster)/", listing), "Debian 13: below /usr, no private dir"
    assert not re.search(r"/(pydantic|pydantic_core|pydantic_settings)/", listing), "nothing bundled"
    assert not re.search(r"\.(so|pyc)$", listing, re.M)
    assert not re.search(r"dist-info/(RECORD|direct_url\.json)$", listing, re.M), "pip's records of the build tree"


@pytest.mark.integration
@needs_dpkg
@pytest.mark.parametrize("suite", SUITES)
def test_deb_is_lintian_clean(deb_files: dict[str, Path], suite: str) -> None:
    if shutil.which("lintian") is None:
        pytest.fail("lintian is missing although `make deb` installs it")
    result = run(["lintian", "--fail-on", "error,warning", deb_files[suite]], env=clean_env())
    problems = [line for line in result.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def _dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return in_root(root, "dpkg", *args, env={"DEBIAN_FRONTEND": "noninteractive"})


def _installed_version(root: Path) -> str:
    return in_root(root, "dpkg-query", "-W", "-f=${Status} ${Version}", NAME).stdout


@pytest.fixture(scope="module", params=SUITES)
def installed_deb(
    request: pytest.FixtureRequest, deb_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The suite's .deb installed with dpkg -i in a fresh root of that suite (never on this machine)."""
    if not IS_ROOT or shutil.which("systemd-nspawn") is None:
        pytest.skip("Debian roots need root and systemd-nspawn")
    suite: str = request.param
    root = fresh_root(suite, tmp_path_factory.mktemp(f"root-{suite}"))
    try:
        before = snapshot(root)
        shutil.copy(deb_files[suite], root / "root")
        result = _dpkg(root, "-i", f"/root/{deb_files[suite].name}")
        assert result.returncode == 0, result.stdout + result.stderr
        (root / "root" / deb_files[suite].name).unlink()
        yield {"suite": suite, "root": root, "before": before, "deb": deb_files[suite]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.integration
@needs_nspawn
def test_deb_installs_enables_the_agent_and_starts_nothing(installed_deb: dict[str, Any]) -> None:
    root: Path = installed_deb["root"]
    link = root / f"etc/systemd/system/multi-user.target.wants/{NAME}.service"
    unit_dir = "/lib/systemd/system" if installed_deb["suite"] == "bookworm" else "/usr/lib/systemd/system"
    assert os.readlink(link) == f"{unit_dir}/{NAME}.service"
    new_links = sorted(
        p for p in snapshot(root, ["/etc/systemd"]) - installed_deb["before"] if (root / p[1:]).is_symlink()
    )
    assert new_links == [str(link)[len(str(root)) :]], "only the boot agent is enabled; reconcile and leave are opt-in"
    assert (root / "etc/sysconfig").is_dir() and (root / f"etc/{NAME}/config.d").is_dir()
    assert not (root / "etc/sysconfig/etcd-cluster").exists(), "installing must not run the agent"
    assert not (root / f"run/{NAME}.lock").exists(), "installing must not run the agent"
    for unit in (*ALL_UNITS, "etcd.service"):  # the root's own systemd, with Debian's etcd-server
        result = in_root(root, "systemd-analyze", "--man=no", "verify", unit)
        assert (result.returncode, result.stderr) == (0, ""), f"{unit}:\n{result.stderr}"
    # verify above read it (its guards: test_verify_reads_the_dropins); it is where the root's systemd looks
    assert (root / unit_dir.lstrip("/") / "etcd.service.d/10-etcd-aws-cluster.conf").is_file()
    assert in_root(root, "man", "-w", NAME).stdout.strip().endswith(f"/man8/{NAME}.8.gz")
    security = in_root(root, "systemd-analyze", "security", "--offline=yes", "--no-pager", f"{unit_dir}/{NAME}.service")
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert score and float(score.group(1)) <= MAX_EXPOSURE, security.stdout + security.stderr


# Where the installed agent's libraries come from: bookworm's bundle for the pydantic-2 stack, Debian's for the rest.
ORIGINS = {
    "bookworm": {
        "boto3": "/usr/lib/python3/dist-packages/",
        "pydantic": f"/usr/lib/{NAME}/",
        "agent": f"/usr/lib/{NAME}/",
    },
    "trixie": dict.fromkeys(("boto3", "pydantic", "agent"), "/usr/lib/python3/dist-packages/"),
}


@pytest.mark.integration
@needs_nspawn
def test_installed_agent_help_version_and_dry_run_without_metadata(installed_deb: dict[str, Any]) -> None:
    root: Path = installed_deb["root"]
    shown = in_root(root, NAME, "--help")
    assert shown.returncode == 0 and "usage: etcd-aws-cluster" in shown.stdout, shown.stderr
    assert in_root(root, NAME, "--version").stdout.strip() == f"{NAME} {__version__}"

    before = snapshot(root)
    started = time.monotonic()
    result = in_root(root, NAME, "--dry-run", env={"AWS_EC2_METADATA_DISABLED": "true"}, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stdout + result.stderr
    assert "instance metadata" in result.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert snapshot(root) == before, "a dry run must write nothing"

    launcher = (root / "usr/bin" / NAME).read_text().splitlines()
    path_setup = "".join(f"{line}; " for line in launcher if line.startswith("sys.path"))
    probe = in_root(
        root,
        "/usr/bin/python3",
        "-I",
        "-c",
        f"import sys; {path_setup}import boto3, pydantic, pydantic_settings, etcd_aws_cluster.app.boot as agent; "
        "print(boto3.__file__, pydantic.__file__, agent.__file__, pydantic.VERSION)",
    )
    assert probe.returncode == 0, probe.stderr
    boto3_file, pydantic_file, agent_file, pydantic_version = probe.stdout.split()
    where = ORIGINS[installed_deb["suite"]]
    assert boto3_file.startswith(where["boto3"]) and pydantic_file.startswith(where["pydantic"])
    assert agent_file.startswith(where["agent"]) and pydantic_version.startswith("2.")


@pytest.mark.integration
@needs_nspawn
def test_installed_agent_dry_run_against_the_local_fakes(installed_deb: dict[str, Any], sim: Any) -> None:
    """Debian's boto3 1.26 ignores AWS_ENDPOINT_URL by itself: the installed agent must still reach moto."""
    asg = sim(size=1)
    node = asg.nodes[0]
    env = {k: v for k, v in asg.agent_env(node).items() if k.startswith(("AWS_", "ETCD_AWS_CLUSTER_"))}
    env.pop("ETCD_AWS_CLUSTER_OUTPUT", None)
    result = in_root(installed_deb["root"], NAME, "--dry-run", env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# decision: new" in result.stdout, result.stdout
    assert f"ETCD_NAME={node.name}" in result.stdout
    assert not (installed_deb["root"] / "etc/sysconfig/etcd-cluster").exists(), "a dry run must not write the file"


def _older_release(deb: Path, directory: Path) -> Path:
    """The same package relabelled as an earlier release (0.0.1), to upgrade from."""
    tree = directory / "older"
    run(["dpkg-deb", "-R", deb, tree], check=True)
    control = tree / "DEBIAN/control"
    version = _deb_field(deb, "Version")
    control.write_text(control.read_text().replace(f"Version: {version}", "Version: 0.0.1-1"))
    older = directory / "older.deb"
    run(["dpkg-deb", "--root-owner-group", "-b", tree, older], check=True)
    return older


@pytest.mark.integration
@needs_nspawn
@pytest.mark.parametrize("suite", SUITES)
def test_deb_upgrade_keeps_local_settings_and_the_enabled_unit_and_runs_nothing(
    suite: str, deb_files: dict[str, Path], tmp_path: Path
) -> None:
    root = fresh_root(suite, tmp_path / "root")
    shutil.copy(_older_release(deb_files[suite], tmp_path), root / "root/older.deb")
    shutil.copy(deb_files[suite], root / "root/new.deb")
    assert _dpkg(root, "-i", "/root/older.deb").returncode == 0
    assert _installed_version(root) == "install ok installed 0.0.1-1"
    config = root / f"etc/{NAME}/config.toml"
    config.write_text(config.read_text() + "timeout = 60.0\n")  # a local edit of a conffile
    (root / f"etc/{NAME}/config.d/50-local.toml").write_text("peer_port = 2390\n")
    (root / f"etc/default/{NAME}").unlink()  # a conffile the administrator deleted stays deleted
    link = root / f"etc/systemd/system/multi-user.target.wants/{NAME}.service"
    assert link.is_symlink()

    upgraded = _dpkg(root, "-i", "/root/new.deb")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert _installed_version(root) == f"install ok installed {_deb_field(deb_files[suite], 'Version')}"
    assert config.read_text().endswith("timeout = 60.0\n"), "the local edit survives"
    assert (root / f"etc/{NAME}/config.d/50-local.toml").read_text() == "peer_port = 2390\n"
    assert not (root / f"etc/default/{NAME}").exists()
    assert link.is_symlink(), "still enabled"
    assert not (root / "etc/sysconfig/etcd-cluster").exists() and not (root / f"run/{NAME}.lock").exists(), (
        "an upgrade must not run the agent"
    )
    assert in_root(root, NAME, "--version").stdout.strip() == f"{NAME} {__version__}"
    shutil.rmtree(root)


@pytest.mark.integration
@needs_nspawn
def test_deb_remove_then_purge_leaves_nothing_behind_but_etcds_file(installed_deb: dict[str, Any]) -> None:
    root: Path = installed_deb["root"]
    etcd_file = root / "etc/sysconfig/etcd-cluster"
    etcd_file.write_text("ETCD_NAME=i-0123456789abcdef0\n")  # what the agent wrote at an earlier boot
    (root / "var/lib/etcd/default/member").mkdir(parents=True, exist_ok=True)
    etcd_data = snapshot(root, ["/var/lib/etcd"])
    (root / f"etc/{NAME}/config.d/50-local.toml").write_text("timeout = 60.0\n")
    (root / f"etc/{NAME}/disabled").touch()

    removed = _dpkg(root, "--remove", NAME)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not (root / f"usr/bin/{NAME}").exists()
    assert not any(root.glob("*lib/systemd/system/etcd.service.d/10-etcd-aws-cluster.conf"))
    assert (root / f"etc/{NAME}/config.toml").exists(), "remove keeps the conffiles"

    purged = _dpkg(root, "--purge", NAME)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert _installed_version(root) == ""
    assert etcd_file.read_text() == "ETCD_NAME=i-0123456789abcdef0\n", "purge must leave the agent's last output alone"
    assert snapshot(root, ["/var/lib/etcd"]) == etcd_data, "purge must leave etcd's data alone"
    after = snapshot(root) - {"/etc/sysconfig", str(etcd_file)[len(str(root)) :]}
    before = installed_deb["before"] | etcd_data
    assert sorted(after - before) == [], "left behind"
    assert sorted(before - after) == [], "removed although it was there before"


# --- the .rpm ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rpm_file() -> Path:
    """The .rpm, built once per session by `make rpm`."""
    return built("rpm", "PKG_RPM_FILE")


@pytest.fixture(scope="module")
def rpm_root(rpm_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .rpm installed into a scratch root (`rpm --root`, no scripts: they are for the real target)."""
    root = tmp_path_factory.mktemp("rpm-root")
    run(["rpm", "--root", root, "--initdb"], check=True)
    run(["rpm", "-i", "--nodeps", "--noscripts", "--root", root, rpm_file], check=True)
    # what the target's ca-certificates package provides: the bundled certifi points there
    trust_store = root / "etc/pki/tls/certs/ca-bundle.crt"
    trust_store.parent.mkdir(parents=True)
    trust_store.write_text("")
    return root


def _bundle_dir(root: Path) -> Path:
    (found,) = [p for p in (root / "usr/lib64" / NAME, root / "usr/lib" / NAME) if p.is_dir()]
    return found


@pytest.mark.integration
def test_rpm_metadata_dependencies_and_scripts(rpm_file: Path) -> None:
    def query(*args: str) -> str:
        return run(["rpm", "-qp", *args, rpm_file], check=True).stdout

    files = query("-l").splitlines()
    for path in (
        f"/usr/bin/{NAME}",
        *(f"/usr/lib/systemd/system/{unit}" for unit in ALL_UNITS),
        "/usr/lib/systemd/system/etcd.service.d/10-etcd-aws-cluster.conf",
        "/usr/lib/systemd/system/etcd2.service.d/10-etcd-aws-cluster.conf",
        f"/usr/lib/systemd/system-preset/50-{NAME}.preset",
        f"/etc/{NAME}/config.toml",
        f"/etc/{NAME}/config.d",
        f"/etc/sysconfig/{NAME}",
        f"/usr/share/man/man8/{NAME}.8.gz",
        f"/usr/share/doc/{NAME}/iam-policy.json",
        f"/usr/share/doc/{NAME}/etcd-aws-cluster.rules.yml",
    ):
        assert path in files, path
    bundled = {p.split("/")[4] for p in files if p.startswith(f"/usr/lib64/{NAME}/") and p.count("/") >= 4}
    assert {"boto3", "botocore", "requests", "pydantic", "pydantic_core", "pydantic_settings", "tomli"} <= bundled
    assert "zstandard" in bundled  # snapshots are stored zstd-compressed
    assert not any(p.endswith(".pyc") and "cpython-39" not in p for p in files), "byte code for the wrong Python"

    requires = query("--requires")
    assert "python(abi) = 3.9" in requires
    assert "/usr/bin/python3.9" in requires
    assert "ca-certificates" in requires
    assert "pydantic" not in requires and "boto3" not in requires
    provides = query("--provides").split()
    assert provides and all(p.startswith((NAME, f"config({NAME})")) or p in "=" or p[0].isdigit() for p in provides), (
        f"the bundle must provide nothing to other packages: {provides}"
    )
    assert "python3-systemd" in query("--recommends")

    flags = dict(
        reversed(line.split(" ", 1)) for line in query("--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]").splitlines()
    )
    assert "n" in flags[f"/etc/{NAME}/config.toml"] and "c" in flags[f"/etc/{NAME}/config.toml"], "noreplace"
    assert "n" in flags[f"/etc/sysconfig/{NAME}"]
    _scripts_never_start_or_stop(query("--scripts"))


@pytest.mark.integration
def test_rpm_passes_rpmlint(rpm_file: Path) -> None:
    if shutil.which("rpmlint") is None:
        pytest.fail("rpmlint is missing although `make rpm` installs it")
    result = run(["rpmlint", "-c", PACKAGING / "rpm" / "rpmlint.toml", rpm_file], env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 errors, 0 warnings" in result.stdout, result.stdout


@pytest.mark.integration
@needs_systemd_tools
def test_rpm_units_verify_score_and_preset_in_a_scratch_root(rpm_root: Path) -> None:
    for name in ALL_UNITS:
        unit_file = rpm_root / "usr/lib/systemd/system" / name
        if name.endswith(".service"):
            unit = parse_unit(unit_file.read_text())
            # the agent's own settings; the gateway reads what the agent wrote instead
            settings = "/etc/sysconfig/etcd-cluster" if name == f"{NAME}-gateway.service" else f"-/etc/sysconfig/{NAME}"
            assert single(unit, "Service", "EnvironmentFile") == settings, name
            score, report = exposure(unit_file)
            assert score <= MAX_EXPOSURE, report

    # systemd's own units beside the package's (as on the target), a stand-in etcd, and EL's default preset
    for host_unit in Path("/usr/lib/systemd/system").iterdir():
        target = rpm_root / "usr/lib/systemd/system" / host_unit.name
        if not os.path.lexists(target) and not host_unit.name.startswith(("etcd", NAME)):
            if host_unit.is_symlink():
                target.symlink_to(os.readlink(host_unit))
            elif host_unit.is_dir():
                shutil.copytree(host_unit, target, symlinks=True)
            else:
                shutil.copyfile(host_unit, target)
    (rpm_root / "usr/lib/systemd/system/etcd.service").write_text(STAND_IN_ETCD_UNIT)
    (rpm_root / "usr/bin/etcd").write_text("#!/bin/sh\n")
    (rpm_root / "usr/bin/etcd").chmod(0o755)
    for name in (*ALL_UNITS, "etcd.service"):
        result = verify(name, rpm_root)
        assert (result.returncode, result.stderr) == (0, ""), f"{name}:\n{result.stderr}"

    presets = rpm_root / "usr/lib/systemd/system-preset"
    (presets / "99-default-disable.preset").write_text("disable *\n")
    run(["systemctl", f"--root={rpm_root}", "preset", *ALL_UNITS], check=True)
    link = rpm_root / "etc/systemd/system/multi-user.target.wants" / f"{NAME}.service"
    assert os.readlink(link) == f"/usr/lib/systemd/system/{NAME}.service"
    enabled = sorted(p.name for p in (rpm_root / "etc/systemd/system").rglob("*") if p.is_symlink())
    assert enabled == [f"{NAME}.service"], "the preset enables the boot agent only"


def _python39() -> str:
    python = make_variable("PKG_PY39")
    if not python:
        pytest.skip("no Python 3.9 on this machine (pyenv install 3.9): the .rpm's bundle cannot run here")
    return python


def _bundle_runner(root: Path) -> list[str]:
    """argv that runs the installed launcher's code with Python 3.9 against the bundle inside `root`."""
    launcher = (root / "usr/bin" / NAME).read_text()
    assert launcher.startswith("#!/usr/bin/python3.9 -I\n"), launcher.splitlines()[0]
    code = launcher.replace('"/usr/lib64/', f'"{root}/usr/lib64/').replace('"/usr/lib/', f'"{root}/usr/lib/')
    return [_python39(), "-I", "-c", code]


@pytest.mark.integration
def test_rpm_bundle_runs_on_python39(rpm_root: Path) -> None:
    runner = _bundle_runner(rpm_root)
    shown = run([*runner, "--help"], env=clean_env(), timeout=30)
    assert shown.returncode == 0 and "usage: etcd-aws-cluster" in shown.stdout, shown.stderr
    result = run([*runner, "--dry-run"], env=clean_env(AWS_EC2_METADATA_DISABLED="true"), timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    bundle = _bundle_dir(rpm_root)
    probe = run(
        [
            _python39(),
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(bundle)!r}); import boto3, botocore, requests, urllib3, tomli, "
            "pydantic_core, pydantic_settings, certifi; "
            "print(boto3.__file__, urllib3.__version__, pydantic_core.__file__, certifi.where())",
        ],
        env=clean_env(),
        check=True,
    )
    boto3_file, urllib3_version, core_file, ca_file = probe.stdout.split()
    assert boto3_file.startswith(str(bundle)) and core_file.startswith(str(bundle))
    assert urllib3_version.startswith("1.")
    assert os.readlink(ca_file) == "../../../../etc/pki/tls/certs/ca-bundle.crt", "system trust store"
    assert Path(ca_file).resolve() == rpm_root / "etc/pki/tls/certs/ca-bundle.crt"


@pytest.mark.integration
def test_rpm_bundle_dry_run_against_the_local_fakes(rpm_root: Path, sim: Any) -> None:
    asg = sim(size=1)
    node = asg.nodes[0]
    result = run([*_bundle_runner(rpm_root), "--dry-run"], env=asg.agent_env(node), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# decision: new" in result.stdout, result.stdout
    assert not node.env_file.exists()
