"""One error tree; each class names its kind, and the kind its label and exit code."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar


class ErrorKind(Enum):
    """What went wrong, as the command line says it: "error (<label>): ..." and the exit code.

    The first kind of each exit code describes the code (in --help, the README and the man page); a later kind of
    the same code is a case of it with a label of its own."""

    ERROR = (
        "error",
        1,
        "unexpected error: an OS error (e.g. a file that cannot be read) or a bug; one line, the traceback with -v",
    )
    SYSTEM = ("system", 1, "an OS error no command turned into an agent error, e.g. a file that cannot be read")
    INTERNAL = ("internal", 1, "a bug: an exception no command expected")
    CONFIGURATION = ("configuration", 2, "invalid configuration or command line")
    METADATA = ("instance metadata", 3, "instance metadata (IMDS) unavailable or invalid")
    AWS = ("AWS", 4, "AWS API error (Auto Scaling / EC2)")
    ETCD = ("etcd", 5, "etcd error (membership change failed, TLS, bad answers)")
    REFUSED = ("refused", 6, "refused: proceeding could split the cluster or lose quorum")
    RECORD_CHANGED = ("record changed", 6, "the cluster record changed between this run's read and its write")
    CORRUPT_SNAPSHOT = ("corrupt snapshot", 6, "a snapshot does not match the size or sha256 its manifest promises")
    OUTPUT = ("output", 7, "the output file could not be written")
    LOCK = ("lock", 8, "another run holds the lock")
    DRILL_FAILED = ("drill failed", 9, "a restore drill (backup --verify) did not restore what the backups recorded")

    def __init__(self, label: str, exit_code: int, meaning: str) -> None:
        self.label = label
        self.exit_code = exit_code
        self.meaning = meaning


class AgentError(Exception):
    """Base of every error the agent reports as one line on stderr."""

    kind: ClassVar[ErrorKind] = ErrorKind.ERROR

    @property
    def exit_code(self) -> int:
        return self.kind.exit_code


class ConfigError(AgentError):
    """Settings or command line are invalid."""

    kind = ErrorKind.CONFIGURATION


class MetadataError(AgentError):
    """The instance metadata service (IMDS) could not tell who we are."""

    kind = ErrorKind.METADATA


class AwsError(AgentError):
    """An AWS API call failed or returned something unusable."""

    kind = ErrorKind.AWS


class EtcdError(AgentError):
    """An etcd call failed in a way retries could not fix."""

    kind = ErrorKind.ETCD


class UnsafeError(AgentError):
    """Proceeding could split the cluster, lose quorum or write a broken file."""

    kind = ErrorKind.REFUSED


class RecordRaceError(UnsafeError):
    """The cluster record changed between this run's read and its conditional write: another instance wrote it
    first. A boot decides again; a refresh is applied again to the fresh record."""

    kind = ErrorKind.RECORD_CHANGED


class DrillFailedError(AgentError):
    """A restore drill did not restore what the backups recorded: a restore today may not either."""

    kind = ErrorKind.DRILL_FAILED


class OutputError(AgentError):
    """The output file could not be written."""

    kind = ErrorKind.OUTPUT


class LockError(AgentError):
    """Another run of the agent holds the lock."""

    kind = ErrorKind.LOCK


SUCCESS = "success: file written (or plan printed with --dry-run)"


def _exit_codes() -> tuple[tuple[int, str], ...]:
    described: dict[int, str] = {0: SUCCESS}
    for kind in ErrorKind:
        described.setdefault(kind.exit_code, kind.meaning)
    return tuple(sorted(described.items()))


EXIT_CODES: tuple[tuple[int, str], ...] = _exit_codes()
"""Exit code -> what it means, for --help, the README and the man page."""
