"""The README must say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from etcd_aws_cluster.app.settings import ENV_PREFIX, Settings
from etcd_aws_cluster.base.errors import EXIT_CODES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_settings_table_lists_every_setting_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(\w+)` \| `ETCD_AWS_CLUSTER_\w+` \| ([^|]+) \|", README, re.M))
    assert set(rows) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        assert f"`{ENV_PREFIX}{name.upper()}`" in README
        default = field.default
        shown = rows[name].strip()
        if default is None:
            assert shown == "(empty)", name
        elif isinstance(default, bool):
            assert shown == f"`{str(default).lower()}`", name
        elif isinstance(default, float):
            assert float(shown.strip("`")) == default, name
        else:
            assert shown == f"`{default}`", name


def test_readme_exit_codes_match() -> None:
    for code, meaning in EXIT_CODES:
        assert re.search(rf"^\| {code} \| {re.escape(meaning)}", README, re.M), code


def test_man_page_is_generated_from_the_code() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "scripts" / "manpage.py"), "--check"], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_the_makefile_exports_no_variable_in_the_agents_settings_namespace() -> None:
    # The agent warns about every ETCD_AWS_CLUSTER_* variable it does not know; a test harness variable there would
    # show up in every agent run the tests make.
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    exported = [line for line in makefile.splitlines() if line.startswith("export ")]
    assert exported and not [line for line in exported if "ETCD_AWS_CLUSTER_" in line]


def test_readme_module_table_names_every_module_once_under_its_layer() -> None:
    """ "Where the code lives" covers the package: every module in one row, in the folder of the layer it names."""
    root = Path(__file__).resolve().parents[1]
    package = root / "etcd_aws_cluster"
    modules = sorted(str(path.relative_to(package)) for path in package.rglob("*.py") if path.name != "__init__.py")
    section = README.split("Where the code lives", 1)[1].split("\n#", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ") and "`" in line]
    named = [(layer.strip(), name) for layer, cell in rows for name in re.findall(r"`([^`]+\.py)`", cell)]
    assert sorted(name for _, name in named) == modules
    for layer, name in named:
        folder = name.split("/")[0] if "/" in name else ""
        expected = {"commands": "face", "": "face"}.get(folder, folder)
        assert layer == expected, f"{name} is listed under {layer}, its folder is {folder or 'the package root'}"
