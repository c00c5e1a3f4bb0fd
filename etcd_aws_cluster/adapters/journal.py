"""Logging to the journal when systemd started us, to stderr otherwise."""

from __future__ import annotations

import logging
import os
import sys

IDENTIFIER = "etcd-aws-cluster"
# syslog priorities for the `<N>` prefix systemd reads from a unit's stderr
PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def stderr_is_journal() -> bool:
    """True when stderr is connected to the journal (systemd.exec(5): JOURNAL_STREAM=dev:ino)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        info = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class _PriorityPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def setup(verbose: bool = False) -> bool:
    """Configure the package logger; returns True when log lines already reach stderr."""
    logger = logging.getLogger("etcd_aws_cluster")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    to_stderr = True
    if stderr_is_journal():
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)
            to_stderr = False
        except ImportError:
            handler.setFormatter(_PriorityPrefix("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter(f"{IDENTIFIER}: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    return to_stderr
