"""The metrics model: names, the text format, the merge that keeps other commands' series, and the label rules."""

from __future__ import annotations

import math

import pytest

from etcd_aws_cluster.core import metrics
from etcd_aws_cluster.core.metrics import FAMILIES, Update, merge, parse, render, sample
from tests.harness.promtool import check_metrics


def test_every_family_follows_prometheus_naming() -> None:
    for name, family in FAMILIES.items():
        assert name.startswith("etcd_aws_cluster_") and name == family.full_name
        assert family.kind in ("gauge", "counter")
        assert name.endswith("_total") == (family.kind == "counter"), name
        assert not name.endswith("_total") or family.kind == "counter"
        assert family.help.endswith(".")


def _everything() -> list[metrics.Sample]:
    """One sample of every family, with awkward label values."""
    values = {"command": "run", "result": "success", "reason": "no_quorum", "decision": "join", "asg": 'a"b\\c\nd'}
    return [
        sample(f.name, 1.5 if f.kind == "gauge" else 3, **{k: values[k] for k in f.labels}) for f in FAMILIES.values()
    ]


def test_a_file_with_every_family_passes_promtool_check_metrics() -> None:
    check_metrics(render(_everything()))


def test_render_groups_each_family_under_its_help_and_type() -> None:
    text = render(
        [
            sample("last_run_success", 1, command="run"),
            sample("last_run_success", 0, command="backup"),
            sample("restores_total", 2),
        ]
    )
    assert text.splitlines() == [
        "# HELP etcd_aws_cluster_last_run_success 1 when the command's last run exited 0, else 0.",
        "# TYPE etcd_aws_cluster_last_run_success gauge",
        'etcd_aws_cluster_last_run_success{command="backup"} 0',
        'etcd_aws_cluster_last_run_success{command="run"} 1',
        "# HELP etcd_aws_cluster_restores_total " + metrics.FAMILIES["etcd_aws_cluster_restores_total"].help,
        "# TYPE etcd_aws_cluster_restores_total counter",
        "etcd_aws_cluster_restores_total 2",
    ]
    assert render([]) == ""


def test_label_values_are_escaped_bounded_and_read_back() -> None:
    odd = 'x"y\\z\nw' + "a" * 400
    text = render([sample("asg_instances", 3, asg=odd)])
    line = text.splitlines()[-1]
    assert line.startswith('etcd_aws_cluster_asg_instances{asg="x\\"y\\\\z\\nw') and "\n" not in line
    (back,) = parse(text)
    assert dict(back.labels)["asg"] == odd[: metrics.MAX_LABEL_VALUE]
    assert len(dict(back.labels)["asg"]) == 255
    check_metrics(text)


def test_parse_reads_what_render_wrote() -> None:
    samples = _everything()
    assert sorted(parse(render(samples)), key=lambda s: s.key) == sorted(samples, key=lambda s: s.key)


def test_values_render_as_prometheus_reads_them() -> None:
    assert metrics.format_value(3.0) == "3"
    assert metrics.format_value(1712345678.25) == "1712345678.25"
    assert metrics.format_value(-1.0) == "-1"
    assert metrics.format_value(math.nan) == "NaN"
    assert metrics.format_value(math.inf) == "+Inf"
    assert float(metrics.format_value(1e20)) == 1e20


@pytest.mark.parametrize(
    "line",
    [
        "other_metric 1",  # not ours
        "etcd_aws_cluster_unknown_family 1",
        'etcd_aws_cluster_last_run_success{cmd="run"} 1',  # not its labels
        "etcd_aws_cluster_last_run_success 1",  # missing its label
        'etcd_aws_cluster_last_run_success{command="run"} one',
        'etcd_aws_cluster_last_run_success{command="run} 1',
        'etcd_aws_cluster_restores_total{asg="x"} 1',
    ],
)
def test_parse_drops_lines_that_are_not_ours(line: str) -> None:
    kept = 'etcd_aws_cluster_last_run_success{command="backup"} 0'
    assert parse(f"{line}\n{kept}\n") == [sample("last_run_success", 0, command="backup")]


def test_parse_ignores_a_file_larger_than_the_agent_writes() -> None:
    assert parse("etcd_aws_cluster_restores_total 1\n" + "#" * metrics.MAX_FILE_BYTES) == []


def test_sample_refuses_labels_that_are_not_the_familys() -> None:
    with pytest.raises(ValueError, match="takes labels"):
        sample("last_run_success", 1)
    with pytest.raises(ValueError, match="takes labels"):
        sample("restores_total", 1, command="restore")


def test_merge_replaces_this_commands_series_and_keeps_the_others() -> None:
    existing = [
        sample("last_run_success", 1, command="backup"),
        sample("last_run_success", 1, command="run"),
        sample("backup_last_revision", 10, asg="g"),
    ]
    update = Update()
    update.put(sample("last_run_success", 0, command="run"))
    merged = {s.key: s.value for s in merge(existing, update)}
    assert merged == {
        sample("last_run_success", 0, command="backup").key: 1,
        sample("last_run_success", 0, command="run").key: 0,
        sample("backup_last_revision", 0, asg="g").key: 10,
    }


def test_merge_replaces_a_whole_family_when_asked() -> None:
    existing = [sample("boot_decision", 1, decision="join"), sample("asg_instances", 3, asg="old-name")]
    update = Update()
    update.replace_family("boot_decision", [sample("boot_decision", 1, decision="refused")])
    update.replace_family("asg_instances", [sample("asg_instances", 2, asg="new-name")])
    assert sorted((s.name, s.labels, s.value) for s in merge(existing, update)) == [
        ("etcd_aws_cluster_asg_instances", (("asg", "new-name"),), 2.0),
        ("etcd_aws_cluster_boot_decision", (("decision", "refused"),), 1.0),
    ]


def test_counters_add_to_what_the_file_holds() -> None:
    existing = [sample("runs_total", 4, command="run", result="success"), sample("restores_total", 1)]
    update = Update()
    update.increment(sample("runs_total", 1, command="run", result="success"))
    update.increment(sample("runs_total", 1, command="run", result="refused"))
    update.increment(sample("restores_total", 1))
    update.increment(sample("restores_total", 1))
    merged = {s.key: s.value for s in merge(existing, update)}
    assert merged[sample("runs_total", 0, command="run", result="success").key] == 5
    assert merged[sample("runs_total", 0, command="run", result="refused").key] == 1
    assert merged[sample("restores_total", 0).key] == 3


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("the cluster has no quorum: 1 of 3 voting members answer. Restore ...; refusing to join", "no_quorum"),
        ("removing member i-1 would leave 1 of 3, below quorum; refusing", "no_quorum"),
        ("gave up after 180s: waiting for the ASG to be complete", "gave_up"),
        ("the instances of ASG g answer for different etcd clusters (1, 2); refusing to pick one", "split"),
        ("2 members claim this instance; remove the extra ones with etcdctl", "split"),
        ("stale data; stale_data=refuse is set, so move the data dir aside by hand and rerun", "stale_data"),
        ("instance i-1 is not in ASG g", "not_in_asg"),
        ("instance i-1 is Standby in ASG g; only InService or Pending instances take part", "not_in_asg"),
        ("the cluster record says a cluster existed ... no snapshot is stored under backup_url", "recovery"),
        ("cannot read etcd data dir /x/member/wal: Permission denied; refusing to decide", "local_data"),
        ("refusing private IP from IMDS: '1.2.3' is not a valid private IP", "invalid_input"),
        ("something new", "other"),
        ("", "other"),
    ],
)
def test_refusals_map_to_a_fixed_set_of_reasons(message: str, reason: str) -> None:
    assert metrics.refusal_reason(message) == reason
    assert reason in metrics.REFUSAL_REASONS


def test_results_are_named_by_exit_code() -> None:
    assert metrics.result_of(0) == "success"
    assert metrics.result_of(6) == "refused"
    assert metrics.result_of(143) == "terminated"
    assert metrics.result_of(99) == "other"


def test_to_json_gives_numbers_and_labelled_lists() -> None:
    data = metrics.to_json([sample("restores_total", 2), sample("last_run_success", 1, command="run")])
    assert data == {"last_run_success": [{"command": "run", "value": 1.0}], "restores_total": 2.0}
