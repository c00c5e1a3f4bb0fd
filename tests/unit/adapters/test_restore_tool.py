"""The restore tool: the right one or none, revisions bumped where it can, restores staged inside the data dir,
the free-space check and the sweep of a killed run's leftovers. Fake tools are shell scripts that answer as
etcdutl/etcdctl/etcd do; real etcd is in tests/integration/test_restore_safety.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etcd_aws_cluster.adapters import local_etcd, restore_tool, scratch
from etcd_aws_cluster.adapters.compression import CorruptSnapshotError
from etcd_aws_cluster.adapters.restore_tool import RestoreTarget, find_tool, holds_data
from etcd_aws_cluster.app.backups import check_db
from etcd_aws_cluster.base.errors import ConfigError, EtcdError, UnsafeError
from etcd_aws_cluster.core.records import SnapshotInfo
from tests.unit.core.test_records import snap

BUMP_HELP = "  --bump-revision uint64   How much to increase the latest revision after restore\n  --mark-compacted\n"


def fake_tool(directory: Path, kind: str, version: str, *, bump: bool = True, status: str = "") -> Path:
    """A script that answers `version`, `snapshot restore --help` (with or without the bump flags), `snapshot
    status` (with `status`) and `snapshot restore ... --data-dir D` (writes D/member/snap/db) as etcd's tools do."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / kind
    restore_help = BUMP_HELP if bump else "  --skip-hash-check\n"
    path.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = version ] && {{ echo "{kind} version: {version}"; echo "API version: 3"; exit 0; }}\n'
        f'[ "$3" = --help ] && {{ printf "%s" "{restore_help}"; exit 0; }}\n'
        f"[ \"$2\" = status ] && {{ echo '{status}'; exit 0; }}\n"
        'while [ $# -gt 0 ]; do [ "$1" = --data-dir ] && d=$2; shift; done\n'
        '[ -n "$FAIL" ] && { mkdir -p "$d/member"; echo "boom" >&2; exit 3; }\n'
        'mkdir -p "$d/member/snap" "$d/member/wal" && echo db > "$d/member/snap/db"\n'
    )
    path.chmod(0o755)
    return path


def fake_etcd(directory: Path, version: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "etcd"
    path.write_text(f'#!/bin/sh\necho "etcd Version: {version}"\necho "Git SHA: x"\n')
    path.chmod(0o755)
    return path


def path_of(*directories: Path) -> dict[str, str]:
    return {"PATH": os.pathsep.join(str(d) for d in directories)}


# --- one version parser -------------------------------------------------------------------------------------------
def test_one_parser_reads_every_programs_version_line() -> None:
    assert local_etcd.program_version("etcd Version: 3.7.3\nGit SHA: x\n", "etcd") == (3, 7, 3)
    assert local_etcd.program_version("etcdutl version: 3.5.30\nAPI version: 3.5\n", "etcdutl") == (3, 5, 30)
    assert local_etcd.program_version("etcdctl version: 3.4.23\n", "etcdctl") == (3, 4, 23)
    assert local_etcd.program_version("etcdctl version: 3.4.23\n", "etcdutl") is None
    assert local_etcd.parse_version("3.5.0-alpha.0") == (3, 5, 0)
    assert local_etcd.parse_version("v3.5.0") is None


# --- the right tool or none ---------------------------------------------------------------------------------------
def test_the_etcdutl_beside_the_local_etcd_comes_before_path_order(tmp_path: Path) -> None:
    debian, release = tmp_path / "usr-bin", tmp_path / "opt-etcd"
    fake_tool(debian, "etcdctl", "3.4.23", bump=False)
    fake_tool(release, "etcdutl", "3.7.3")
    fake_etcd(release, "3.7.3")
    tool = find_tool(None, path_of(debian, release))
    assert (tool.path, tool.kind, tool.version, tool.can_bump) == (release / "etcdutl", "etcdutl", (3, 7, 3), True)


def test_an_older_tool_than_the_local_etcd_is_refused_naming_what_to_install(tmp_path: Path) -> None:
    debian, release = tmp_path / "usr-bin", tmp_path / "opt-etcd"
    fake_tool(debian, "etcdctl", "3.4.23", bump=False)
    fake_etcd(release, "3.7.3")
    with pytest.raises(ConfigError) as refused:
        find_tool(None, path_of(debian, release))
    message = str(refused.value)
    assert f"{debian / 'etcdctl'} (etcdctl 3.4.23) is older than etcd 3.7.3 at {release / 'etcd'}" in message
    assert "Install etcdutl 3.7 or newer (Debian: etcd-server 3.7" in message


def test_a_tool_older_than_the_snapshots_etcd_is_passed_over_or_refused(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    fake_tool(old, "etcdutl", "3.5.30")
    with pytest.raises(ConfigError, match=r"older than a snapshot of etcd 3\.6\.16.*etcdutl 3\.6 or newer"):
        find_tool(None, path_of(old), snapshot_versions=["3.5.30", "3.6.16"])
    fake_tool(new, "etcdctl", "3.6.16")
    with pytest.raises(ConfigError, match="cannot restore snapshots since etcd 3.6"):
        find_tool(None, path_of(old, new), snapshot_versions=["3.6.16"])
    fake_tool(new, "etcdutl", "3.6.16")
    assert find_tool(None, path_of(old, new), snapshot_versions=["3.6.16"]).path == new / "etcdutl"
    assert find_tool(None, path_of(old, new), snapshot_versions=["3.5.1"]).path == old / "etcdutl"  # PATH order


def test_the_configured_tool_is_the_only_one_and_is_checked_against_the_etcd_beside_it(tmp_path: Path) -> None:
    elsewhere, release = tmp_path / "elsewhere", tmp_path / "release"
    good = fake_tool(elsewhere, "etcdutl", "3.7.3")
    configured = fake_tool(release, "etcdutl", "3.6.16")
    fake_etcd(release, "3.7.3")
    with pytest.raises(ConfigError, match=r"etcdutl 3\.6\.16\) is older than etcd 3\.7\.3"):
        find_tool(configured, path_of(elsewhere))
    assert find_tool(good, path_of(elsewhere)).path == good


def test_bump_support_is_read_from_the_tools_own_help(tmp_path: Path) -> None:
    without = find_tool(fake_tool(tmp_path / "a", "etcdutl", "3.5.1", bump=False), {"PATH": ""})
    assert not without.can_bump
    warning = restore_tool.bump_warning(without)
    assert warning is not None and "cannot bump revisions (etcdutl 3.5.1)" in warning
    assert restore_tool.bump_warning(find_tool(fake_tool(tmp_path / "b", "etcdutl", "3.5.30"), {"PATH": ""})) is None


def test_the_tools_programs_start_side_by_side(tmp_path: Path) -> None:
    """`version`, `snapshot restore --help` and the etcd beside's `--version` each wait (up to 10 s) until the
    others have started: started one after the other, `version` would answer nothing and the tool be refused."""
    release, marks = tmp_path / "release", tmp_path / "marks"
    marks.mkdir()
    wait = f'i=0; while [ ! -e "{marks}/$1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; [ -e "{marks}/$1" ]'
    release.mkdir()
    (release / "etcdutl").write_text(
        "#!/bin/sh\n"
        f"seen() {{ {wait}; }}\n"
        f'[ "$1" = version ] && {{ touch "{marks}/version"; seen help && seen etcd && echo "etcdutl version: 3.6.16"; '
        "exit 0; }\n"
        f'[ "$3" = --help ] && {{ touch "{marks}/help"; seen version && printf "%s" "{BUMP_HELP}"; exit 0; }}\n'
    )
    (release / "etcd").write_text(
        f'#!/bin/sh\nseen() {{ {wait}; }}\ntouch "{marks}/etcd"; seen version && echo "etcd Version: 3.6.16"\n'
    )
    for program in ("etcdutl", "etcd"):
        (release / program).chmod(0o755)
    tool = find_tool(release / "etcdutl", {"PATH": ""})
    assert (tool.version, tool.can_bump) == ((3, 6, 16), True)
    assert local_etcd.local_etcds({"PATH": ""}, beside=(release / "etcdutl",)) == {release / "etcd": (3, 6, 16)}


def test_an_etcds_version_is_asked_once_per_file_and_a_silent_one_again(tmp_path: Path) -> None:
    asked = tmp_path / "asked"
    etcd = tmp_path / "bin" / "etcd"
    etcd.parent.mkdir()

    def program(answer: str) -> None:
        etcd.write_text(f'#!/bin/sh\necho x >> "{asked}"\n{answer}\n')
        etcd.chmod(0o755)

    def times_asked() -> int:
        return len(asked.read_text().splitlines())

    program('echo "etcd Version: 3.5.30"')
    assert [local_etcd.version_of(etcd), local_etcd.version_of(etcd)] == [(3, 5, 30), (3, 5, 30)]
    assert times_asked() == 1
    program('echo "etcd Version: 3.6.16" # upgraded')  # another file at the same path: asked again
    assert local_etcd.version_of(etcd) == (3, 6, 16) and times_asked() == 2
    program("exit 1")  # no answer is kept: a program that did not say is asked again next time
    assert [local_etcd.version_of(etcd), local_etcd.version_of(etcd)] == [None, None]
    assert times_asked() == 4


# --- staging inside the data dir ------------------------------------------------------------------------------
def target(data_dir: Path) -> RestoreTarget:
    return RestoreTarget(data_dir, "n1", "n1=http://127.0.0.1:2380", "tok", "http://127.0.0.1:2380")


def test_lost_found_stale_copies_and_scratch_files_are_not_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert not holds_data(data_dir)
    for name in ("lost+found", ".stale-20240506T070809Z", ".restoring-12", ".snapshot-12.db"):
        (data_dir / name).mkdir(parents=True)
    assert not holds_data(data_dir)
    (data_dir / "member").mkdir()
    assert holds_data(data_dir)


def test_a_restore_stages_inside_the_data_dir_and_moves_member_into_place(tmp_path: Path) -> None:
    tool = find_tool(fake_tool(tmp_path / "bin", "etcdutl", "3.6.16"), {"PATH": ""})
    data_dir = tmp_path / "data"
    (data_dir / "lost+found").mkdir(parents=True)
    restore_tool.restore(tool, tmp_path / "snap.db", target(data_dir))
    assert (data_dir / "member" / "snap" / "db").read_text() == "db\n"
    assert sorted(os.listdir(data_dir)) == ["lost+found", "member"]
    assert sorted(os.listdir(tmp_path)) == ["bin", "data"]  # nothing beside the data dir


def test_a_failed_restore_leaves_the_data_dir_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = find_tool(fake_tool(tmp_path / "bin", "etcdutl", "3.6.16"), {"PATH": ""})
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(EtcdError, match="boom"):
        restore_tool.restore(tool, tmp_path / "snap.db", target(tmp_path / "data"))
    assert os.listdir(tmp_path / "data") == []


def test_a_restore_refuses_a_data_dir_with_data(tmp_path: Path) -> None:
    tool = find_tool(fake_tool(tmp_path / "bin", "etcdutl", "3.6.16"), {"PATH": ""})
    (tmp_path / "data" / "member").mkdir(parents=True)
    with pytest.raises(UnsafeError, match="holds data"):
        restore_tool.restore(tool, tmp_path / "snap.db", target(tmp_path / "data"))


# --- the db against its manifest ----------------------------------------------------------------------------------
def with_hash(info: SnapshotInfo, db_hash: int | None) -> SnapshotInfo:
    from dataclasses import replace

    return replace(info, db_hash=db_hash)


@pytest.mark.parametrize(
    ("revision", "db_hash", "manifest_hash", "fits"),
    [
        (42, 7, 7, True),
        (43, 7, 7, False),  # exact revision when the manifest knows the hash
        (42, 8, 7, False),
        (42, 1, None, True),  # a streamed snapshot's manifest knows a lower bound only
        (50, 1, None, True),
        (41, 1, None, False),
    ],
)
def test_the_db_must_be_the_one_its_manifest_names(
    tmp_path: Path, revision: int, db_hash: int, manifest_hash: int | None, fits: bool
) -> None:
    status = json.dumps({"hash": db_hash, "revision": revision, "totalKey": 3, "totalSize": 20480})
    tool = find_tool(fake_tool(tmp_path / "bin", "etcdutl", "3.6.16", status=status), {"PATH": ""})
    info = with_hash(snap("p/a.db", 42), manifest_hash)
    if fits:
        check_db(tool, tmp_path / "a.db", info, "s3://b/p/a.db")
    else:
        with pytest.raises(CorruptSnapshotError, match=r"s3://b/p/a\.db is corrupt: its db is at revision"):
            check_db(tool, tmp_path / "a.db", info, "s3://b/p/a.db")


def test_a_db_the_tool_cannot_read_is_corrupt(tmp_path: Path) -> None:
    tool = find_tool(fake_tool(tmp_path / "bin", "etcdutl", "3.6.16", status="not json"), {"PATH": ""})
    with pytest.raises(CorruptSnapshotError, match="is corrupt"):
        check_db(tool, tmp_path / "a.db", snap("p/a.db", 42), "s3://b/p/a.db")


# --- free space and the sweep -------------------------------------------------------------------------------------
def test_too_little_free_space_is_refused_naming_the_path_and_the_numbers(tmp_path: Path) -> None:
    scratch.ensure_free(tmp_path, 1024, "restoring x")
    free_mib = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize // scratch.MIB
    with pytest.raises(UnsafeError) as refused:
        scratch.ensure_free(tmp_path, 2**60, "restoring s3://b/p/a.db")
    message = str(refused.value)
    assert f"restoring s3://b/p/a.db: {tmp_path} has" in message and f"{2**60 // scratch.MIB} MiB needed" in message
    assert abs(int(message.split(" has ")[1].split(" MiB")[0]) - free_mib) < 64


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_the_sweep_removes_what_dead_runs_left_and_keeps_the_rest(tmp_path: Path) -> None:
    data_dir = tmp_path / "default"
    dead, alive = dead_pid(), os.getpid()
    leftovers = [
        data_dir / f".restoring-{dead}",
        data_dir / f".snapshot-{dead}.db",
        data_dir / f"..snapshot-{dead}.db.x1y2.part",
        data_dir / f"..snapshot-{dead}.db.x1y2.part.0A1b2C3d",
        data_dir / f".handoff-{dead}.db",
        data_dir / f".spool-{dead}.db",
        data_dir / f".replay-{dead}",  # a replay's throwaway etcd (its agent killed)
        data_dir / f".replay-{dead}.db",
        tmp_path / f".default.restoring-{dead}",  # an earlier agent's, beside the data dir
        tmp_path / f"..default.snapshot-{dead}.db.abc.part",
    ]
    kept = [
        data_dir / "member" / "wal",
        data_dir / ".stale-20240506T070809Z",
        data_dir / f".spool-{alive}.db",
        data_dir / f".replay-{alive}",
        data_dir / "lost+found",
        tmp_path / f".other.restoring-{dead}",  # beside, but not of this data dir
    ]
    for path in leftovers + kept:
        path.mkdir(parents=True)
    (data_dir / f".restoring-{dead}" / "member").mkdir()
    (data_dir / f".replay-{dead}" / "data" / "member").mkdir(parents=True)
    gone = scratch.sweep([data_dir])
    assert sorted(gone) == sorted(leftovers)
    assert all(p.exists() for p in kept)
    assert not any(p.exists() for p in leftovers)


def test_a_backup_sweeps_only_dead_spools(tmp_path: Path) -> None:
    dead = dead_pid()
    for name in (f".spool-{dead}.db", f".spool-{os.getpid()}.db", f".restoring-{dead}", f"..snapshot-{dead}.db.a.part"):
        (tmp_path / name).touch()
    assert scratch.sweep_spools(tmp_path) == [tmp_path / f".spool-{dead}.db"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".spool-{os.getpid()}.db", f".restoring-{dead}", f"..snapshot-{dead}.db.a.part"]
    )


def test_a_drill_sweeps_only_dead_drills_downloads_and_replays(tmp_path: Path) -> None:
    dead = dead_pid()
    mine = os.getpid()
    for name in (
        f".snapshot-{dead}.db",
        f".replay-{dead}",
        f".replay-{mine}",
        f".restoring-{dead}",
        f".spool-{dead}.db",
    ):
        (tmp_path / name).mkdir() if name.startswith(".replay") else (tmp_path / name).touch()
    assert sorted(scratch.sweep_drills(tmp_path)) == sorted(
        [tmp_path / f".snapshot-{dead}.db", tmp_path / f".replay-{dead}"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".replay-{mine}", f".restoring-{dead}", f".spool-{dead}.db"]
    )
