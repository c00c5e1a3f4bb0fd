"""The agent's metrics: their names, the Prometheus text format (node_exporter's textfile collector) and the merge of
one run's metrics into the file every command shares.

Pure: parsing, merging and rendering; app/metrics.py collects the facts during a run and writes the file.

Every family is declared here, with its labels, even those a future command sets (backup --follow's delta lag,
the verified recovery point, `ready`): a command only sets values, and a family without a value is not written.
Label values come from a fixed enum (command, result, reason, decision) or from a validated name (the ASG), and are
escaped and bounded all the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from etcd_aws_cluster.base.errors import ErrorKind

PREFIX = "etcd_aws_cluster_"
# A label value longer than this is cut: an ASG name is at most 255 characters, nothing else comes close.
MAX_LABEL_VALUE = 255
# The file is ours alone; one far larger than the agent could write is not parsed (it starts afresh).
MAX_FILE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Family:
    name: str  # without PREFIX
    kind: str  # gauge or counter
    help: str
    labels: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        return PREFIX + self.name


_FAMILIES = (
    Family("last_run_timestamp_seconds", "gauge", "When the command's last run ended (Unix time).", ("command",)),
    Family("last_run_duration_seconds", "gauge", "How long the command's last run took.", ("command",)),
    Family("last_run_success", "gauge", "1 when the command's last run exited 0, else 0.", ("command",)),
    Family("last_run_exit_code", "gauge", "The exit code of the command's last run.", ("command",)),
    Family("runs_total", "counter", "Runs of each command by result (exit code meaning).", ("command", "result")),
    Family("refusals_total", "counter", "Runs refused (exit 6) by reason.", ("command", "reason")),
    Family("boot_decision", "gauge", "The last boot's decision: 1 for it, 0 for the others.", ("decision",)),
    Family("asg_instances", "gauge", "InService and Pending instances of the ASG, at the last look.", ("asg",)),
    Family("cluster_members", "gauge", "etcd members (voters and learners), at the last look.", ("asg",)),
    Family("backup_interval_seconds", "gauge", "The backup_interval setting: scheduled backups' period.", ("asg",)),
    Family(
        "backup_last_success_timestamp_seconds",
        "gauge",
        "When this host last uploaded a snapshot (Unix time).",
        ("asg",),
    ),
    Family("backup_last_size_bytes", "gauge", "Size of the last snapshot this host uploaded.", ("asg",)),
    Family("backup_last_duration_seconds", "gauge", "How long the last snapshot upload took.", ("asg",)),
    Family("backup_last_revision", "gauge", "etcd revision of the last snapshot this host uploaded.", ("asg",)),
    Family(
        "backup_newest_snapshot_timestamp_seconds",
        "gauge",
        "When the newest snapshot under backup_url was taken, as a scheduled backup last saw it (Unix time).",
        ("asg",),
    ),
    Family(
        "backup_delta_lag_seconds",
        "gauge",
        "How long the oldest change of the last delta waited before it was uploaded (backup --follow).",
        ("asg",),
    ),
    Family(
        "backup_delta_last_success_timestamp_seconds",
        "gauge",
        "When this host last uploaded a delta (backup --follow; Unix time).",
        ("asg",),
    ),
    Family("backup_delta_last_revision", "gauge", "The last revision of the last delta this host uploaded.", ("asg",)),
    Family(
        "backup_verified_timestamp_seconds",
        "gauge",
        "When the last verified recovery point was taken: a snapshot restored and checked (Unix time).",
        ("asg",),
    ),
    Family("backup_verified_revision", "gauge", "etcd revision of the last verified recovery point.", ("asg",)),
    Family("backup_verification_success", "gauge", "1 when the last snapshot verification passed, else 0.", ("asg",)),
    Family("restores_total", "counter", "Snapshots restored on this host (restore, or a boot's restore decision)."),
    Family("restore_last_timestamp_seconds", "gauge", "When this host last restored a snapshot (Unix time)."),
    Family("restore_last_duration_seconds", "gauge", "How long the last restore took."),
    Family("restore_last_revision", "gauge", "etcd revision of the last snapshot restored on this host."),
    Family("ready", "gauge", "1 when this host's etcd member was last found ready, else 0."),
)
FAMILIES: dict[str, Family] = {f.full_name: f for f in _FAMILIES}

# The values of the enum labels. A run's exit code says its result; a refusal's message says its reason.
RESULTS: dict[int, str] = {
    0: "success",
    # The agent's own exit codes, named by the first error kind of each (base/errors.py): one table, not two.
    **{kind.exit_code: kind.label.lower().replace(" ", "_") for kind in reversed(ErrorKind)},
    10: "degraded",  # status's verdicts
    11: "no_quorum",
    130: "interrupted",
    143: "terminated",
}
BOOT_DECISIONS = ("new", "member", "join", "restart", "restore", "skip", "proxy", "refused", "failed")
# First match wins; the patterns are the words of the refusals in core/plan.py, view.py, recovery.py.
_REFUSAL_REASONS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("gave_up", re.compile(r"\bgave up\b")),
    ("no_quorum", re.compile(r"quorum")),
    ("split", re.compile(r"different etcd clusters|claim this instance|has this instance's peer URL|peer URLs")),
    ("stale_data", re.compile(r"stale_data=refuse")),
    ("not_in_asg", re.compile(r"not in ASG|only InService or Pending|not InService/Pending|not a member")),
    ("recovery", re.compile(r"cluster record|snapshot|hand(?:-| )?off|restore")),
    ("local_data", re.compile(r"data dir|\bWAL\b")),
    ("invalid_input", re.compile(r"not a valid|refusing .* from |not valid JSON|too large")),
)
REFUSAL_REASONS = (*(name for name, _ in _REFUSAL_REASONS), "other")


def result_of(exit_code: int) -> str:
    return RESULTS.get(exit_code, "other")


def refusal_reason(message: str) -> str:
    """One of REFUSAL_REASONS for a refusal's message: a label from a small fixed set, never the free text."""
    return next((name for name, pattern in _REFUSAL_REASONS if pattern.search(message)), "other")


Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    name: str  # with PREFIX
    labels: Labels
    value: float

    @property
    def key(self) -> tuple[str, Labels]:
        return self.name, self.labels


def sample(name: str, value: float, **labels: str) -> Sample:
    """A sample of family `name` (without PREFIX); its labels must be exactly the family's."""
    family = FAMILIES[PREFIX + name]
    if set(labels) != set(family.labels):
        raise ValueError(f"{family.full_name} takes labels {family.labels}, not {tuple(labels)}")
    return Sample(family.full_name, tuple((k, bound_label(labels[k])) for k in family.labels), float(value))


def bound_label(value: str) -> str:
    return value[:MAX_LABEL_VALUE]


@dataclass
class Update:
    """What one run changes in the file: families it replaces whole, series it sets, counters it adds to."""

    replace: set[str] = field(default_factory=set)  # family names with PREFIX
    sets: dict[tuple[str, Labels], Sample] = field(default_factory=dict)
    adds: dict[tuple[str, Labels], Sample] = field(default_factory=dict)

    def put(self, item: Sample) -> None:
        self.sets[item.key] = item

    def replace_family(self, name: str, samples: Iterable[Sample]) -> None:
        """All of family `name` (without PREFIX) becomes `samples`: stale label values go (a one-hot gauge)."""
        self.replace.add(PREFIX + name)
        for item in samples:
            self.put(item)

    def increment(self, item: Sample) -> None:
        previous = self.adds.get(item.key)
        self.adds[item.key] = Sample(item.name, item.labels, item.value + (previous.value if previous else 0.0))


def merge(existing: Iterable[Sample], update: Update) -> list[Sample]:
    """The file's samples after `update`: another command's series are kept as they were."""
    series: dict[tuple[str, Labels], Sample] = {
        s.key: s for s in existing if s.name in FAMILIES and s.name not in update.replace
    }
    series.update(update.sets)
    for key, delta in update.adds.items():
        before = series.get(key)
        series[key] = Sample(delta.name, delta.labels, delta.value + (before.value if before else 0.0))
    return list(series.values())


# --- the text format ---------------------------------------------------------------------------------------------
def escape_label(value: str) -> str:
    return bound_label(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape_label(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def render(samples: Iterable[Sample]) -> str:
    """The text format: each family once, HELP and TYPE first, its series sorted; families in declared order."""
    by_family: dict[str, list[Sample]] = {}
    for item in samples:
        if item.name in FAMILIES:
            by_family.setdefault(item.name, []).append(item)
    lines: list[str] = []
    for name, family in FAMILIES.items():
        items = sorted(by_family.get(name, ()), key=lambda s: s.labels)
        if not items:
            continue
        lines.append(f"# HELP {name} {family.help}")
        lines.append(f"# TYPE {name} {family.kind}")
        for item in items:
            labels = ",".join(f'{k}="{escape_label(v)}"' for k, v in item.labels)
            lines.append(
                f"{name}{{{labels}}} {format_value(item.value)}" if labels else f"{name} {format_value(item.value)}"
            )
    return "\n".join(lines) + "\n" if lines else ""


_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def parse(text: str) -> list[Sample]:
    """The samples of a file this module rendered. Lines of unknown families, with other labels than their family's
    or that do not parse are dropped: the file is rewritten from what is left."""
    if len(text) > MAX_FILE_BYTES:
        return []
    samples: list[Sample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parsed = _parse_line(line)
        if parsed is not None:
            samples.append(parsed)
    return samples


def _parse_line(line: str) -> Sample | None:
    match = _LINE.fullmatch(line.strip())
    if match is None:
        return None
    name, label_text, value_text = match.groups()
    family = FAMILIES.get(name)
    if family is None:
        return None
    labels: dict[str, str] = {}
    position = 0
    label_text = label_text or ""
    while position < len(label_text):
        label = _LABEL.match(label_text, position)
        if label is None or label.end() == position:
            return None
        labels[label.group(1)] = _unescape_label(label.group(2))
        position = label.end()
    if set(labels) != set(family.labels):
        return None
    try:
        value = float(value_text)
    except ValueError:
        return None
    return Sample(name, tuple((k, bound_label(labels[k])) for k in family.labels), value)


def to_json(samples: Iterable[Sample]) -> dict[str, object]:
    """The same facts for `status --json`: a family without labels is a number, one with labels a list of them."""
    samples = list(samples)
    out: dict[str, object] = {}
    for name, family in FAMILIES.items():
        items = sorted((s for s in samples if s.name == name), key=lambda s: s.labels)
        if not items:
            continue
        short = family.name
        if not family.labels:
            out[short] = items[0].value
        else:
            out[short] = [{**dict(s.labels), "value": s.value} for s in items]
    return out
