"""Each error class names its kind; the kind gives the label the command line prints and the exit code, and the
exit-code table of --help, the README and the man page is derived from the kinds."""

from __future__ import annotations

import pytest

from etcd_aws_cluster.adapters.compression import CorruptSnapshotError
from etcd_aws_cluster.base.errors import (
    EXIT_CODES,
    AgentError,
    AwsError,
    ConfigError,
    ErrorKind,
    EtcdError,
    LockError,
    MetadataError,
    OutputError,
    RecordRaceError,
    UnsafeError,
)


@pytest.mark.parametrize(
    ("error", "label", "code"),
    [
        (AgentError, "error", 1),
        (ConfigError, "configuration", 2),
        (MetadataError, "instance metadata", 3),
        (AwsError, "AWS", 4),
        (EtcdError, "etcd", 5),
        (UnsafeError, "refused", 6),
        (RecordRaceError, "record changed", 6),
        (CorruptSnapshotError, "corrupt snapshot", 6),
        (OutputError, "output", 7),
        (LockError, "lock", 8),
    ],
)
def test_each_class_has_its_label_and_exit_code(error: type[AgentError], label: str, code: int) -> None:
    raised = error("what and why")
    assert (raised.kind.label, raised.exit_code) == (label, code)


def test_a_subclass_keeps_its_parents_exit_code_under_a_label_of_its_own() -> None:
    race = RecordRaceError("the record changed")
    assert isinstance(race, UnsafeError) and race.exit_code == UnsafeError("x").exit_code
    assert race.kind is not UnsafeError.kind


def test_the_exit_code_table_is_derived_from_the_kinds() -> None:
    assert EXIT_CODES == (
        (0, "success: file written (or plan printed with --dry-run)"),
        (
            1,
            "unexpected error: an OS error (e.g. a file that cannot be read) or a bug; one line, the traceback with -v",
        ),
        (2, "invalid configuration or command line"),
        (3, "instance metadata (IMDS) unavailable or invalid"),
        (4, "AWS API error (Auto Scaling / EC2)"),
        (5, "etcd error (membership change failed, TLS, bad answers)"),
        (6, "refused: proceeding could split the cluster or lose quorum"),
        (7, "the output file could not be written"),
        (8, "another run holds the lock"),
        (9, "a restore drill (backup --verify) did not restore what the backups recorded"),
    )
    # every kind's exit code is in the table, described by the first kind of that code
    described = dict(EXIT_CODES)
    for kind in ErrorKind:
        first = next(k for k in ErrorKind if k.exit_code == kind.exit_code)
        assert described[kind.exit_code] == first.meaning


def test_labels_are_unique() -> None:
    labels = [kind.label for kind in ErrorKind]
    assert len(labels) == len(set(labels))
