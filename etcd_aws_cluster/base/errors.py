"""One error tree; each class maps to a documented exit code."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent reports as one line on stderr."""

    exit_code = 1
    kind = "error"


class ConfigError(AgentError):
    """Settings or command line are invalid."""

    exit_code = 2
    kind = "configuration"


class MetadataError(AgentError):
    """The instance metadata service (IMDS) could not tell who we are."""

    exit_code = 3
    kind = "instance metadata"


class AwsError(AgentError):
    """An AWS API call failed or returned something unusable."""

    exit_code = 4
    kind = "AWS"


class EtcdError(AgentError):
    """An etcd call failed in a way retries could not fix."""

    exit_code = 5
    kind = "etcd"


class UnsafeError(AgentError):
    """Proceeding could split the cluster, lose quorum or write a broken file."""

    exit_code = 6
    kind = "refused"


class RecordRaceError(UnsafeError):
    """The cluster record changed between this run's read and its conditional write: another instance wrote it
    first. A boot decides again; a refresh is applied again to the fresh record."""

    kind = "record changed"


class OutputError(AgentError):
    """The output file could not be written."""

    exit_code = 7
    kind = "output"


class LockError(AgentError):
    """Another run of the agent holds the lock."""

    exit_code = 8
    kind = "lock"


EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success: file written (or plan printed with --dry-run)"),
    (1, "unexpected error: an OS error (e.g. a file that cannot be read) or a bug; one line, the traceback with -v"),
    (2, "invalid configuration or command line"),
    (3, "instance metadata (IMDS) unavailable or invalid"),
    (4, "AWS API error (Auto Scaling / EC2)"),
    (5, "etcd error (membership change failed, TLS, bad answers)"),
    (6, "refused: proceeding could split the cluster or lose quorum"),
    (7, "the output file could not be written"),
    (8, "another run holds the lock"),
)
