"""Snapshot manifests and the cluster record: strict JSON both ways, and the pure choices."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core import records
from etcd_aws_cluster.core.records import (
    LINEAGE,
    Checksum,
    ClusterRecord,
    Handoff,
    SnapshotInfo,
    SnapshotMeta,
    handoff_from_json,
    handoff_to_json,
    new_lineage,
    newest_first,
    newest_valid,
    of_lineage,
    other_lineages_hint,
    record_from_json,
    record_lineage,
    record_to_json,
    retention,
    same_decision,
    snapshot_from_json,
    snapshot_to_json,
)

UTC = timezone.utc
NOW = datetime(2024, 5, 10, 12, 0, 0, tzinfo=UTC)
SHA = "ab" * 32


def snap(key: str, revision: int, taken_at: datetime = NOW) -> SnapshotInfo:
    return SnapshotInfo(
        key=key,
        taken_at=taken_at,
        revision=revision,
        cluster_id=0xCDF818194E3A8C32,
        etcd_version="3.5.17",
        sha256=SHA,
        size=20480,
        members=(("i-0123456789abcdef0", "http://10.0.0.1:2380"), ("", "http://10.0.0.2:2380")),
        source_instance="i-0123456789abcdef0",
    )


def record() -> ClusterRecord:
    return ClusterRecord(
        asg_name="etcd prod",
        cluster_id=0xCDF818194E3A8C32,
        members=(("i-0123456789abcdef0", "https://10.0.0.1:2380"),),
        newest_snapshot="backups/etcd%20prod/snapshots/x.db",
        updated_at=NOW,
    )


def test_snapshot_round_trips() -> None:
    info = snap("p/a.db", 42, NOW.replace(microsecond=123456))
    assert snapshot_from_json(snapshot_to_json(info), "test") == info


def test_record_round_trips_with_and_without_a_snapshot() -> None:
    assert record_from_json(record_to_json(record()), "test") == record()
    bare = ClusterRecord("g", 1, (), None, NOW)
    assert record_from_json(record_to_json(bare), "test") == bare


def test_a_restore_record_round_trips_the_clusters_it_replaced() -> None:
    restored = replace(record(), cluster_id=None, replaces=(0x8, 0xCDF818194E3A8C32, 0x8))
    assert restored.replaces == (0x8, 0xCDF818194E3A8C32)  # a set, sorted: the same JSON on every instance
    text = record_to_json(restored)
    assert json.loads(text)["replaces"] == ["8", "cdf818194e3a8c32"]
    assert record_from_json(text, "test") == restored


def test_a_record_that_replaces_nothing_is_written_as_before() -> None:
    assert "replaces" not in json.loads(record_to_json(record()))  # what agents before the field read


@pytest.mark.parametrize("value", [[], "7", ["0"], ["xyz"], [7], ["7"] * 65, None], ids=lambda v: repr(v)[:20])
def test_record_refuses_an_odd_list_of_replaced_clusters(value: object) -> None:
    data = json.loads(record_to_json(record()))
    data["replaces"] = value
    with pytest.raises(UnsafeError, match="cluster id"):
        record_from_json(json.dumps(data), "test")


def test_meta_and_info_refuse_naive_times() -> None:
    with pytest.raises(ValueError, match="UTC"):
        SnapshotMeta(datetime(2024, 1, 1), 1, 1, "3.5.0", (), "i-0123456789abcdef0")  # noqa: DTZ001
    other = timezone(timedelta(hours=2))
    with pytest.raises(ValueError, match="UTC"):
        snap("a.db", 1, NOW.astimezone(other))


def test_info_of_meta_carries_every_field() -> None:
    meta = SnapshotMeta(NOW, 7, 9, "3.4.23", (("n", "http://h:1"),), "i-0123456789abcdef0")
    info = SnapshotInfo.of("k.db", meta, Checksum(SHA, 5))
    assert (info.key, info.revision, info.cluster_id, info.sha256, info.size) == ("k.db", 7, 9, SHA, 5)
    assert (info.taken_at, info.etcd_version, info.members, info.source_instance) == (
        NOW,
        "3.4.23",
        (("n", "http://h:1"),),
        "i-0123456789abcdef0",
    )


def _tampered(change: dict[str, Any]) -> str:
    data = json.loads(snapshot_to_json(snap("p/a.db", 42)))
    data.update(change)
    return json.dumps({k: v for k, v in data.items() if v is not ...})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version '2' is not 1"),
        ({"format": "something/else"}, "not an etcd-aws-cluster/snapshot"),
        ({"extra": 1}, "unknown fields \\['extra'\\]"),
        ({"sha256": ...}, "missing fields \\['sha256'\\]"),
        ({"key": "../../etc/passwd"}, "object key"),
        ({"key": "/abs.db"}, "object key"),
        ({"key": "a b.db"}, "object key"),
        ({"taken_at": "2024-05-10T12:00:00Z"}, "time"),
        ({"taken_at": "2024-13-10T12:00:00.000000Z"}, "time"),
        ({"revision": -1}, "revision"),
        ({"revision": True}, "revision"),
        ({"revision": "5"}, "revision"),
        ({"cluster_id": "0"}, "cluster id"),
        ({"cluster_id": "xyz"}, "cluster id"),
        ({"etcd_version": "3.5.0; rm -rf"}, "etcd version"),
        ({"sha256": "AB" * 32}, "sha256"),
        ({"size": 2**50}, "size"),
        ({"members": [["n", "ftp://h:1"]]}, "URL"),
        ({"members": [["bad name!", "http://h:1"]]}, "member name"),
        ({"members": [["n"]]}, "member"),
        ({"members": {}}, "member list"),
        ({"source_instance": "i-xyz"}, "instance id"),
    ],
)
def test_snapshot_manifest_refuses_anything_off(change: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsafeError, match=message):
        snapshot_from_json(_tampered(change), "s3://b/p/a.json")


@pytest.mark.parametrize("text", ["", "[]", "null", "{not json", b"\xff\xfe", " " * 300_000])
def test_garbage_is_refused(text: str | bytes) -> None:
    with pytest.raises(UnsafeError):
        snapshot_from_json(text, "test")
    with pytest.raises(UnsafeError):
        record_from_json(text, "test")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"asg_name": ""}, "Auto Scaling group name"),
        ({"members": [["node-1", "http://h:1"]]}, "instance id"),
        ({"newest_snapshot": "a//b.db"}, "object key"),
        ({"updated_at": 5}, "time"),
        ({"version": 0}, "version '0'"),
    ],
)
def test_record_refuses_anything_off(change: dict[str, Any], message: str) -> None:
    data = json.loads(record_to_json(record()))
    data.update(change)
    with pytest.raises(UnsafeError, match=message):
        record_from_json(json.dumps(data), "test")


def test_newest_orders_by_revision_then_time_then_key() -> None:
    earlier = NOW - timedelta(hours=1)
    listing = [snap("c.db", 5, earlier), snap("a.db", 9, earlier), snap("b.db", 9, NOW), snap("d.db", 9, NOW)]
    assert [s.key for s in newest_first(listing)] == ["d.db", "b.db", "a.db", "c.db"]
    # Every instance picks the same one, whatever order its listing came in.
    assert {newest_valid(order).key for order in (listing, listing[::-1], listing[1:] + listing[:1])} == {"d.db"}


def test_newest_valid_skips_rejected_and_may_find_none() -> None:
    listing = [snap("a.db", 1), snap("b.db", 2)]
    assert newest_valid(listing, rejected={"b.db"}) == listing[0]
    assert newest_valid(listing, rejected={"a.db", "b.db"}) is None
    assert newest_valid([]) is None


def _hourly(days: int) -> list[SnapshotInfo]:
    """One snapshot every 6 hours for `days` days up to NOW, revisions growing with time."""
    count = days * 4
    return [snap(f"s{i:03}.db", i + 1, NOW - timedelta(hours=6 * (count - 1 - i))) for i in range(count)]


@pytest.mark.parametrize(
    ("keep_last", "keep_daily_days", "kept"),
    [
        (2, 0, {"s010.db", "s011.db"}),
        (1, 1, {"s011.db"}),  # the newest is also today's newest
        (1, 2, {"s011.db", "s008.db"}),  # plus yesterday's newest
        (3, 2, {"s011.db", "s010.db", "s009.db", "s008.db"}),
        (1, 30, {"s011.db", "s008.db", "s004.db", "s000.db"}),  # one per day as far back as there are
        (0, 0, {"s011.db"}),  # never delete the newest
        (100, 0, {f"s{i:03}.db" for i in range(12)}),
    ],
)
def test_retention_table(keep_last: int, keep_daily_days: int, kept: set[str]) -> None:
    listing = _hourly(3)
    # s000 is May 7 18:00; s001-s004 are May 8 (00, 06, 12, 18h); s005-s008 May 9; s009-s011 May 10 (00, 06, 12h).
    assert [s.taken_at.day for s in listing] == [7, 8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10]
    deleted = retention(listing, NOW, keep_last, keep_daily_days)
    assert {s.key for s in deleted} == {s.key for s in listing} - kept
    assert [s.revision for s in deleted] == sorted(s.revision for s in deleted)  # oldest first


def test_retention_daily_keeps_the_newest_of_a_day_by_the_shared_order() -> None:
    day = NOW - timedelta(days=1)
    listing = [snap("late-low.db", 3, day + timedelta(hours=5)), snap("early-high.db", 4, day), snap("now.db", 9)]
    assert [s.key for s in retention(listing, NOW, 1, 2)] == ["late-low.db"]


def test_retention_of_nothing_is_nothing() -> None:
    assert retention([], NOW, 3, 3) == ()


# --- a member's raw db as a snapshot: no sha256 trailer, said in the manifest -------------------------------------
def test_a_manifest_without_the_flag_has_a_trailer_and_stays_as_before() -> None:
    info = snap("p/a.db", 42)
    assert info.hash_trailer
    assert "hash_trailer" not in json.loads(snapshot_to_json(info))  # what agents before the flag read


def test_a_raw_db_manifest_says_so_and_round_trips() -> None:
    info = SnapshotInfo.of(
        "p/raw.db", SnapshotMeta(NOW, 7, 5, "3.5.17", (), "i-0123456789abcdef0", False), Checksum(SHA, 9)
    )
    assert json.loads(snapshot_to_json(info))["hash_trailer"] is False
    assert snapshot_from_json(snapshot_to_json(info), "test") == info
    assert not snapshot_from_json(snapshot_to_json(info), "test").hash_trailer


@pytest.mark.parametrize("value", ["false", 0, None, 1])
def test_a_hash_trailer_flag_that_is_not_a_boolean_is_refused(value: object) -> None:
    with pytest.raises(UnsafeError, match="hash_trailer"):
        snapshot_from_json(_tampered({"hash_trailer": value}), "test")


# --- the db's hash: with it the manifest's revision is exact -----------------------------------------------------
def test_a_db_hash_round_trips_and_is_written_only_when_known() -> None:
    meta = SnapshotMeta(NOW, 7, 5, "3.6.1", (), "i-0123456789abcdef0", db_hash=2241994221)
    info = SnapshotInfo.of("p/a.db", meta, Checksum(SHA, 9))
    assert json.loads(snapshot_to_json(info))["db_hash"] == 2241994221
    assert snapshot_from_json(snapshot_to_json(info), "test") == info
    assert "db_hash" not in json.loads(snapshot_to_json(snap("p/b.db", 3)))
    assert snapshot_from_json(snapshot_to_json(snap("p/b.db", 3)), "test").db_hash is None


@pytest.mark.parametrize("value", ["2241994221", -1, 2**32, None, True, 1.5])
def test_a_db_hash_that_is_not_a_crc32_is_refused(value: object) -> None:
    with pytest.raises(UnsafeError, match="db hash"):
        snapshot_from_json(_tampered({"db_hash": value}), "test")


# --- hand-offs ---------------------------------------------------------------------------------------------------
def handoff(revision: int | None = 42, uploaded: str | None = None) -> Handoff:
    return Handoff(
        instance_id="i-0123456789abcdef0",
        record_updated_at=NOW,
        revision=revision,
        cluster_id=None if revision is None else 0xCDF818194E3A8C32,
        uploaded=uploaded,
        written_at=NOW + timedelta(seconds=1),
    )


@pytest.mark.parametrize("value", [handoff(), handoff(uploaded="p/g/snapshots/x.db"), handoff(None)])
def test_handoffs_round_trip(value: Handoff) -> None:
    assert handoff_from_json(handoff_to_json(value), "test") == value
    assert json.loads(handoff_to_json(value))["has_data"] is value.has_data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "etcd-aws-cluster/snapshot"}, "not an etcd-aws-cluster/handoff"),
        ({"has_data": "yes"}, "has_data"),
        ({"has_data": False}, "without data names"),
        ({"revision": -3}, "revision"),
        ({"cluster_id": "0"}, "cluster id"),
        ({"uploaded": "../x.db"}, "object key"),
        ({"instance_id": "i-1; reboot"}, "instance id"),
        ({"record_updated_at": "yesterday"}, "time"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_a_handoff_refuses_anything_off(change: dict[str, Any], message: str) -> None:
    data = json.loads(handoff_to_json(handoff()))
    data.update(change)
    with pytest.raises(UnsafeError, match=message):
        handoff_from_json(json.dumps(data), "test")


def test_a_handoff_without_data_names_nothing_else() -> None:
    with pytest.raises(ValueError, match="only with data"):
        Handoff("i-0123456789abcdef0", NOW, None, None, "p/x.db", NOW)


# -- lineage --------------------------------------------------------------------------------------------------

LINE_A = "20240510T120000Z-0a1b2c3d"
LINE_B = "20240601T080000Z-deadbeef"


def of(info: SnapshotInfo, lineage: str | None) -> SnapshotInfo:
    return dataclasses.replace(info, lineage=lineage)


def test_new_lineages_match_the_pattern_and_differ() -> None:
    first, second = new_lineage(NOW), new_lineage(NOW)
    assert LINEAGE.fullmatch(first) and LINEAGE.fullmatch(second) and first != second
    assert first.startswith("20240510T120000Z-")


def test_lineage_round_trips_in_records_and_manifests() -> None:
    info = of(snap("p/a.db", 42), LINE_A)
    assert snapshot_from_json(snapshot_to_json(info), "test") == info
    mine = dataclasses.replace(record(), lineage=LINE_B)
    assert record_from_json(record_to_json(mine), "test") == mine


def test_documents_written_before_lineages_load_as_the_legacy_lineage_and_stay_as_they_were() -> None:
    legacy_manifest = json.loads(snapshot_to_json(snap("p/a.db", 42)))
    legacy_record = json.loads(record_to_json(record()))
    assert "lineage" not in legacy_manifest and "lineage" not in legacy_record
    assert snapshot_from_json(json.dumps(legacy_manifest), "old").lineage is None
    assert record_from_json(json.dumps(legacy_record), "old").lineage is None


@pytest.mark.parametrize("value", [None, "", "x", "20240510T120000Z-0A1B2C3D", "20240510T120000Z-0a1b2c3", 7, "../x"])
def test_a_lineage_that_is_not_one_is_refused(value: object) -> None:
    manifest = json.loads(snapshot_to_json(snap("p/a.db", 42)))
    document = json.loads(record_to_json(record()))
    with pytest.raises(UnsafeError, match="lineage"):
        snapshot_from_json(json.dumps({**manifest, "lineage": value}), "test")
    with pytest.raises(UnsafeError, match="lineage"):
        record_from_json(json.dumps({**document, "lineage": value}), "test")


def test_the_lineage_filter_keeps_one_lineage_newest_first() -> None:
    old_high = of(snap("p/old-high.db", 900), None)
    a1, a2 = of(snap("p/a1.db", 3), LINE_A), of(snap("p/a2.db", 7, NOW + timedelta(hours=1)), LINE_A)
    b = of(snap("p/b.db", 50), LINE_B)
    listed = (old_high, a1, b, a2)
    assert of_lineage(listed, LINE_A) == (a2, a1)
    assert of_lineage(listed, None) == (old_high,)
    assert of_lineage(listed, "20990101T000000Z-00000000") == ()


def test_the_hint_names_other_lineages_only_when_the_records_has_none() -> None:
    legacy, a = of(snap("p/old.db", 900), None), of(snap("p/a.db", 3), LINE_A)
    assert other_lineages_hint((legacy, a), LINE_A) == ""  # the record's lineage has one: no hint
    assert other_lineages_hint((), LINE_A) == ""  # nothing anywhere: no hint either
    hint = other_lineages_hint((legacy,), LINE_A)
    assert "has no snapshot" in hint and "legacy" in hint
    assert "restore --list" in hint and "restore --snapshot KEY" in hint


def test_the_lineage_of_a_record_write() -> None:
    members = (("i-0123456789abcdef0", "https://10.0.0.1:2380"),)
    current = dataclasses.replace(record(), lineage=LINE_A)
    restored = of(snap("p/a.db", 3), LINE_B)
    assert record_lineage(current, None, None, NOW) == LINE_A  # a refresh keeps it
    assert record_lineage(dataclasses.replace(current, lineage=None), None, None, NOW) is None  # legacy too
    assert record_lineage(current, members, restored, NOW) == LINE_B  # a restore continues the snapshot's
    assert record_lineage(current, members, of(restored, None), NOW) is None
    started = record_lineage(None, None, None, NOW)  # no record (a start-over, backups just on): a new one
    assert started is not None and LINEAGE.fullmatch(started)
    fresh = record_lineage(current, members, None, NOW)  # a new cluster over an old record
    assert fresh not in (None, LINE_A)
    peers = dataclasses.replace(current, cluster_id=None, newest_snapshot=None, members=members)
    assert record_lineage(peers, members, None, NOW) == LINE_A  # taking part in the new cluster a peer recorded


def test_same_decision_is_the_same_new_cluster_or_the_same_restore_of_the_same_lineage() -> None:
    members = (("i-0123456789abcdef0", "https://10.0.0.1:2380"), ("i-0fedcba9876543210", "https://10.0.0.2:2380"))
    ours = ClusterRecord("g", None, members, "p/a.db", NOW, LINE_A)
    theirs = dataclasses.replace(ours, members=tuple(reversed(members)), updated_at=NOW + timedelta(seconds=1))
    assert same_decision(theirs, ours)
    assert not same_decision(dataclasses.replace(theirs, lineage=LINE_B), ours)
    assert not same_decision(dataclasses.replace(theirs, newest_snapshot="p/b.db"), ours)
    assert not same_decision(dataclasses.replace(theirs, cluster_id=0xABC), ours)
    assert not same_decision(dataclasses.replace(theirs, members=members[:1]), ours)
    new_ours = dataclasses.replace(ours, newest_snapshot=None, lineage=LINE_B)
    assert same_decision(dataclasses.replace(theirs, newest_snapshot=None), new_ours)  # a new cluster: theirs


def test_retention_never_deletes_the_current_lineage_to_keep_another() -> None:
    """The abandoned cluster's higher revisions do not push the new cluster's snapshots out."""
    old = [of(snap(f"p/old-{n}.db", 1000 - n, NOW - timedelta(days=3, hours=n)), None) for n in range(5)]
    new = [of(snap(f"p/new-{n}.db", 10 - n, NOW - timedelta(hours=n)), LINE_A) for n in range(4)]
    doomed = {i.key for i in retention(old + new, NOW, keep_last=3, keep_daily_days=0)}
    assert doomed == {"p/new-3.db", "p/old-3.db", "p/old-4.db"}  # each lineage keeps its own newest 3
    doomed = {i.key for i in retention(old + new, NOW, keep_last=1, keep_daily_days=1)}
    assert "p/new-0.db" not in doomed and "p/old-0.db" not in doomed  # every lineage stays restorable
    assert doomed == {i.key for i in old[1:] + new[1:]}


def test_retention_within_one_lineage_is_what_it_was() -> None:
    one = [of(info, LINE_A) for info in _hourly(3)]
    assert [i.key for i in retention(one, NOW, 5, 2)] == [i.key for i in retention(_hourly(3), NOW, 5, 2)]


# -- the stored JSON, byte for byte -------------------------------------------------------------------------------
# Texts written by the encoders before the documents shared one codec (tests/unit/core/documents): agents of every
# release read what the others write, so each must read back to the same value and be written again unchanged.
DOCUMENTS = Path(__file__).parent / "documents"
T1 = datetime(2024, 5, 10, 12, 0, 0, 123456, tzinfo=UTC)
T2 = datetime(2024, 5, 10, 12, 0, 1, tzinfo=UTC)
SHA_HEX = "0123456789abcdef" * 4
PAIRS = (("i-0123456789abcdef0", "https://10.0.0.1:2380"), ("", "http://10.0.0.2:2380"))
TWO = (("i-0123456789abcdef0", "https://10.0.0.1:2380"), ("i-0fedcba9876543210", "https://10.0.0.2:2380"))
STORED: dict[str, SnapshotInfo | ClusterRecord | Handoff] = {
    "snapshot-before-options": SnapshotInfo(
        "backups/g/snapshots/a.db", T1, 42, 0xCDF818194E3A8C32, "3.5.17", SHA_HEX, 20480, PAIRS, "i-0123456789abcdef0"
    ),
    "snapshot-raw-db-with-hash-and-lineage": SnapshotInfo(
        "backups/g/snapshots/raw.db",
        T1,
        7,
        0x8,
        "3.4.23",
        SHA_HEX,
        9,
        (),
        "i-0fedcba9876543210",
        hash_trailer=False,
        db_hash=2241994221,
        lineage=LINE_A,
    ),
    "snapshot-db-hash-only": SnapshotInfo(
        "p/b.db", T2, 0, 1, "3.6.1", SHA_HEX, 0, (("etcd-1", "http://h:1"),), "i-0123456789abcdef0", db_hash=0
    ),
    "record-before-options": ClusterRecord(
        "etcd prod", 0xCDF818194E3A8C32, TWO[:1], "backups/etcd%20prod/snapshots/x.db", T1
    ),
    "record-new-cluster-with-lineage": ClusterRecord("g", None, TWO, None, T2, LINE_B),
    "record-restore-replacing": ClusterRecord("g", None, (), "p/a.db", T1, LINE_A, (0xCDF818194E3A8C32, 0x8)),
    "handoff-with-upload": Handoff("i-0123456789abcdef0", T1, 42, 0xCDF818194E3A8C32, "p/g/snapshots/x.db", T2),
    "handoff-data-no-upload": Handoff("i-0123456789abcdef0", T1, 0, 1, None, T2),
    "handoff-no-data": Handoff("i-0fedcba9876543210", T1, None, None, None, T2),
}
CODECS: dict[str, tuple[Callable[[Any], str], Callable[[str, str], Any]]] = {
    "snapshot": (snapshot_to_json, snapshot_from_json),
    "record": (record_to_json, record_from_json),
    "handoff": (handoff_to_json, handoff_from_json),
}


def test_every_stored_text_has_its_value() -> None:
    assert sorted(path.stem for path in DOCUMENTS.glob("*.json")) == sorted(STORED)


@pytest.mark.parametrize("name", sorted(STORED))
def test_a_stored_text_reads_back_to_its_value_and_is_written_again_byte_for_byte(name: str) -> None:
    text = (DOCUMENTS / f"{name}.json").read_text(encoding="ascii")
    write, read = CODECS[name.split("-")[0]]
    assert read(text, "stored") == STORED[name]
    assert write(STORED[name]) == text
    assert write(read(text, "stored")) == text


def test_a_drills_result_round_trips_and_its_words_stay_printable() -> None:
    at = datetime(2026, 12, 7, 10, 0, 0, tzinfo=timezone.utc)
    result = records.Verification("p/s/x.db.zst", at, True, 42, at, 3, 7, "revision 42, 7 keys, hash 12ab")
    assert records.verification_from_json(records.verification_to_json(result), "test") == result
    odd = records.Verification("p/s/x.db.zst", at, False, 1, at, 0, None, "etcd said \x1b[31mred\nline")
    assert records.VERDICT_TEXT.fullmatch(odd.verdict)
    assert records.verification_from_json(records.verification_to_json(odd), "test") == odd
    with pytest.raises(UnsafeError):
        records.verification_from_json(records.verification_to_json(result).replace('"ok": true', '"ok": 1'), "t")
