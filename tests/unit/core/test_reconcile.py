"""The pure reconcile decision (table-driven), its settings, its state file, and its systemd units."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from etcd_aws_cluster.app.settings import Settings, load
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import ConfigError, UnsafeError
from etcd_aws_cluster.commands.reconcile import describe, load_state, save_state
from etcd_aws_cluster.core import view
from etcd_aws_cluster.core.model import AsgInstance, AsgView, EtcdFailure, Identity, Member, MemberList, Probe
from etcd_aws_cluster.core.reconcile import Policy, decide, parse_states
from etcd_aws_cluster.core.view import ClusterView, Facts
from tests.packaging_helpers import SYSTEMD, entries, keys, parse_unit
from tests.unit.builders import EP, IDS, IPS, member

NOW = 1_000_000.0
GRACE = 600.0


@dataclass
class Case:
    """`members`: one digit per member (the instance index it belongs to), `u` before it = added but not started,
    `L` = learner; `asg`: one letter per instance index (I InService, S Standby, T Terminated, W Terminating:Wait,
    D Detaching, - not in the ASG); `answer`: the indexes whose etcd answers. Expected: the removals (indexes, in
    order), the blocked ones and the unstarted ones kept within their grace. This runs as instance 0."""

    id: str
    members: str | list[Member]
    asg: str
    answer: str
    remove: list[int]
    blocked: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    states: str = ""
    seen: dict[int, float] = field(default_factory=dict)

    def member_list(self) -> list[Member]:
        if not isinstance(self.members, str):
            return self.members
        found, prefix = [], ""
        for char in self.members:
            if char.isdigit():
                found.append(member(int(char), started=prefix != "u", learner=prefix == "L"))
                prefix = ""
            else:
                prefix = char
        return found


STATES = {"I": "InService", "S": "Standby", "T": "Terminated", "W": "Terminating:Wait", "D": "Detaching"}
OLD = {103: NOW - GRACE}  # member 3 first seen unstarted one grace period ago
RECENT = {103: NOW - GRACE + 1}
REUSED = [member(0), member(1), member(2, name=IDS[5])]  # member of gone i-5, whose IP live instance 2 now has
ODD_NAME = [member(0), member(1), member(2, name="etcd-2")]

CASES = [
    # id                                                     members  ASG     answer remove
    Case("in step: nothing to do",                           "012",   "III",  "012", []),
    Case("scale-in 5 -> 3: two gone, etcd stopped",          "01234", "III",  "012", [3, 4]),
    Case("Terminated is always gone",                        "012",   "IIT",  "01",  [2]),
    Case("Standby is kept by default",                       "012",   "IIS",  "012", []),
    Case("Standby removed by the setting, even answering",   "012",   "IIS",  "012", [2], states="Standby"),
    Case("Terminating kept by default",                      "012",   "IIW",  "01",  []),
    Case("Terminating covers Terminating:Wait",              "012",   "IIW",  "01",  [2], states="Terminating"),
    Case("Detaching only by the setting",                    "012",   "IID",  "012", [2], states="Detaching"),
    Case("never itself, even when gone by the setting",      "012",   "SII",  "012", [], states="Standby"),
    Case("a silent member of a live instance stays",         "012",   "III",  "01",  []),
    Case("gone although its etcd runs (detached leader)",    "012",   "II-",  "01",  [2]),
    Case("silent voters first, then an answering one",       "0123",  "IIS-", "012", [3, 2], states="Standby"),
    Case("an answering gone voter blocked below quorum",     "012",   "IIS",  "02",  [], [2], states="Standby"),
    Case("unstarted within grace: kept and timed",           "012u3", "IIII", "012", [], waiting=[3], seen=RECENT),
    Case("unstarted first seen now: kept",                   "012u3", "IIII", "012", [], waiting=[3]),
    Case("unstarted past grace: removed first",              "0124u3", "IIII", "012", [3, 4], seen=OLD),
    Case("unstarted of a gone instance: removed at once",    "012u3", "III",  "012", [3]),
    Case("unstarted of a Standby instance keeps its grace",  "012u3", "IIIS", "012", [], waiting=[3]),
    Case("gone learner removed with a bare quorum",          "012L3", "III",  "01",  [3]),
    Case("named after a gone instance, IP reused",           REUSED,  "III",  "01",  [2]),
    Case("a non-instance name belongs to its IP's instance", ODD_NAME, "III", "012", []),
]  # fmt: skip


def facts_of(case: Case) -> Facts:
    asg = {n: STATES[c] for n, c in enumerate(case.asg) if c != "-"}
    instances = tuple(AsgInstance(IDS[n], state, IPS[n] if state != "Terminated" else None) for n, state in asg.items())
    listing = MemberList(tuple(case.member_list()), cluster_id=7)
    probes = tuple(
        Probe(IDS[n], IPS[n], answer=listing)
        if str(n) in case.answer
        else Probe(IDS[n], IPS[n], error=EtcdFailure.REFUSED)
        for n, state in asg.items()
        if state != "Terminated"
    )
    asg = AsgView("etcd", len(instances), instances)
    return Facts(Identity(IDS[0], IPS[0], "us-east-1"), view.build(asg, probes, EP))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision_table(case: Case) -> None:
    result = decide(facts_of(case), Policy(parse_states(case.states), GRACE), case.seen, NOW)
    assert result.members == tuple(sorted(case.member_list(), key=lambda m: m.id))
    assert [r.member.id - 100 for r in result.remove] == case.remove
    assert [r.member.id - 100 for r in result.blocked] == case.blocked
    assert [u.member.id - 100 for u in result.waiting] == case.waiting
    for removal in (*result.remove, *result.blocked):
        assert removal.reason, removal


@pytest.mark.parametrize(
    ("members", "asg", "answering", "message"),
    [
        ("012", "I", "0", "no quorum: 1 of 3"),
        ("01234", "II", "01", "no quorum: 2 of 5"),
        ("012u3", "IIII", "01", "no quorum: 2 of 4"),
        ("012", "III", "", "no etcd of ASG etcd answers"),
        ("12", "III", "012", "not a member of the cluster"),
        ("012", "-II", "12", "not in ASG etcd's view"),
    ],
    ids=["1 of 3", "2 of 5", "unstarted counts as a voter", "nobody answers", "not a member", "not in the ASG"],
)
def test_refuses_without_quorum_or_membership(members: str, asg: str, answering: str, message: str) -> None:
    with pytest.raises(UnsafeError, match=message):
        decide(facts_of(Case("refuse", members, asg, answering, [])), Policy(), {}, NOW)


def test_refuses_answers_from_two_clusters() -> None:
    facts = facts_of(Case("two", "012", "III", "012", []))
    other = MemberList((member(0), member(1), member(2)), cluster_id=8)
    probes = (*facts.view.probes[:2], Probe(IDS[2], IPS[2], answer=other))
    with pytest.raises(UnsafeError, match="different etcd clusters"):
        decide(Facts(facts.me, view.build(facts.asg, probes, EP)), Policy(), {}, NOW)


def test_unstarted_since_keeps_first_sightings_and_drops_the_rest() -> None:
    case = Case("since", "012u3u4", "IIIII", "012", [])
    result = decide(facts_of(case), Policy(grace=GRACE), {103: NOW - 10, 101: NOW - 99, 999: NOW - 5}, NOW)
    assert dict(result.unstarted_since) == {103: NOW - 10, 104: NOW}
    later = decide(facts_of(case), Policy(grace=GRACE), dict(result.unstarted_since), NOW + GRACE - 5)
    assert [r.member.id for r in later.remove] == [103]  # 10 + 595 s >= grace; 104 has 595 s
    assert [u.member.id for u in later.waiting] == [104]


def test_a_clock_that_went_back_restarts_the_grace() -> None:
    case = Case("clock", "012u3", "IIII", "012", [])
    result = decide(facts_of(case), Policy(grace=GRACE), {103: NOW + 3600}, NOW)
    assert not result.remove
    assert dict(result.unstarted_since) == {103: NOW}


@pytest.mark.parametrize(
    ("value", "states"),
    [
        (None, frozenset()),
        ("", frozenset()),
        ("Standby", frozenset({"Standby"})),
        (" Terminating , Detached,", frozenset({"Terminating", "Detached"})),
        (["Standby", "Detaching"], frozenset({"Standby", "Detaching"})),
    ],
)
def test_parse_states(value: object, states: frozenset[str]) -> None:
    assert parse_states(value) == states  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["InService", "Pending", "standby", "Terminated;rm"])
def test_parse_states_refuses_member_states_and_typos(bad: str) -> None:
    with pytest.raises(ValueError, match="not a state"):
        parse_states(bad)


def test_policy_matches_states() -> None:
    policy = Policy(parse_states("Terminating,Standby"))
    assert [policy.removes(s) for s in ("Terminated", "Terminating:Proceed", "Standby", "InService", "Detaching")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert not Policy().removes("Terminating")


def test_settings(tmp_path: Path) -> None:
    none = tmp_path / "none.toml"
    defaults = load({}, none, {})
    assert defaults.reconcile_remove_states is None
    assert defaults.reconcile_grace == 600.0
    assert defaults.reconcile_state_file == Path("/var/lib/etcd-aws-cluster/reconcile.json")
    (tmp_path / "config.toml").write_text('reconcile_remove_states = ["Detaching", "Standby"]\n')
    assert load({}, tmp_path / "config.toml", {}).reconcile_remove_states == "Detaching,Standby"
    environ = {
        "ETCD_AWS_CLUSTER_RECONCILE_REMOVE_STATES": " Terminating,Standby",
        "ETCD_AWS_CLUSTER_RECONCILE_GRACE": "5",
    }
    settings = load({}, none, environ)
    assert settings.reconcile_remove_states == "Standby,Terminating"
    assert settings.reconcile_grace == 5.0
    for name, bad in (("RECONCILE_REMOVE_STATES", "InService"), ("RECONCILE_GRACE", "0")):
        with pytest.raises(ConfigError, match=name.lower()):
            load({}, none, {f"ETCD_AWS_CLUSTER_{name}": bad})


def test_state_file_round_trip_and_damage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state" / "reconcile.json"
    assert load_state(path) == {}
    save_state(path, ((0xABC, 12.5), (7, 99.0)))
    assert load_state(path) == {0xABC: 12.5, 7: 99.0}
    assert json.loads(path.read_text())["unstarted_since"] == {"abc": 12.5, "7": 99.0}
    for damage in (
        "{not json",
        '{"unstarted_since": {"xyz": 1}}',
        "[]",
        '{"unstarted_since": {"1": "x"}}',
        '{"unstarted_since": {"1": NaN}}',
    ):
        path.write_text(damage)
        assert load_state(path) == {}
    assert "ignoring unreadable reconcile state" in caplog.text


def test_dry_run_text_says_what_and_why() -> None:
    case = CASES[1]
    result = decide(facts_of(case), Policy(), {}, NOW)
    text = describe(result, facts_of(case).asg)
    lines = text.splitlines()
    assert lines[0].startswith("# reconcile: ASG etcd: 5 members, 3 of 5 voting members answer (quorum 3)")
    assert [line.split()[4] for line in lines[1:]] == [IDS[3], IDS[4]]
    assert all(f"instance {IDS[n]} is no longer in ASG etcd" in text for n in (3, 4))


# --- the command's loop, against a fake cluster ----------------------------------------------------------


class FakeCluster:
    """What the command sees through its Context: an ASG, a member list it probes, and removals that change it."""

    def __init__(self, asg: str, members: str, answer: str, removed_by_others: tuple[int, ...] = ()) -> None:
        self.case = Case("fake", members, asg, answer, [])
        self.members = self.case.member_list()
        self.removed_by_others = set(removed_by_others)  # gone between our decision and our call
        self.calls: list[int] = []
        self.settings: Any = None
        self.endpoints = EP
        self.deadline = Deadline(10)
        self.call_timeout = 2.0
        self.etcd = self
        self.me = Identity(IDS[0], IPS[0], "us-east-1")
        self.now = lambda: datetime.fromtimestamp(NOW, timezone.utc)

    # Context
    def find_asg(self) -> AsgView:
        return facts_of(self.case).asg

    def observe(self, asg: AsgView) -> ClusterView:
        self.case.members = list(self.members)
        return facts_of(self.case).view

    def backups(self, asg_name: str | None = None) -> None:
        return None  # backup_url is not set

    def retry(self, what: str, call: Callable[[str], bool], client_urls: list[str]) -> bool:
        assert client_urls[0] == EP.client_url(IPS[0]), client_urls  # this instance's etcd first
        return call(client_urls[0])

    # EtcdClient
    def remove_member(self, url: str, member_id: int, timeout: float) -> bool:
        self.calls.append(member_id)
        present = any(m.id == member_id for m in self.members)
        self.members = [m for m in self.members if m.id != member_id]
        return present and member_id - 100 not in self.removed_by_others


def run_command(
    cluster: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str, states: str | None = None
) -> int:
    from etcd_aws_cluster.commands import reconcile as command

    values = {n: f.default for n, f in Settings.model_fields.items()}
    values.update(reconcile_state_file=tmp_path / "s.json", reconcile_remove_states=states)
    cluster.settings = Settings.model_construct(**values)
    code: int = command.run(cluster, argparse.Namespace(dry_run="--dry-run" in args))  # type: ignore[arg-type]
    return code


def test_command_removes_one_at_a_time_and_takes_already_removed_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etcd_aws_cluster")
    cluster = FakeCluster("III", "01234", "012", removed_by_others=(3,))
    assert run_command(cluster, tmp_path, monkeypatch) == 0
    assert cluster.calls == [103, 104]
    assert [m.id - 100 for m in cluster.members] == [0, 1, 2]
    assert f"already removed (by another run) member 67 {IDS[3]}" in caplog.text
    assert f"removed member 68 {IDS[4]}" in caplog.text
    assert json.loads((tmp_path / "s.json").read_text())["unstarted_since"] == {}


def test_command_removes_what_quorum_allows_then_refuses_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = FakeCluster("IIS", "012L3", "02")
    with pytest.raises(UnsafeError, match=f"quorum would be lost: member 66 {IDS[2]}"):
        run_command(cluster, tmp_path, monkeypatch, states="Standby")
    # The gone learner 3 goes; Standby 2 (answering) would leave 1 of 2 voting members answering: refused.
    assert cluster.calls == [103]
    assert [m.id - 100 for m in cluster.members] == [0, 1, 2]
    assert json.loads((tmp_path / "s.json").read_text())["unstarted_since"] == {}


def test_command_times_an_unstarted_member_by_the_contexts_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = FakeCluster("IIII", "012u3", "012")
    assert run_command(cluster, tmp_path, monkeypatch) == 0
    assert cluster.calls == []  # within its grace
    assert json.loads((tmp_path / "s.json").read_text())["unstarted_since"] == {"67": NOW}


def test_command_dry_run_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = FakeCluster("III", "01234", "012")
    assert run_command(cluster, tmp_path, monkeypatch, "--dry-run") == 0
    assert cluster.calls == []
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "s.json.lock").exists()
    assert capsys.readouterr().out.count("would remove member") == 2


# --- the systemd units -----------------------------------------------------------------------------------

SERVICE = SYSTEMD / "etcd-aws-cluster-reconcile.service"
TIMER = SYSTEMD / "etcd-aws-cluster-reconcile.timer"
# systemd-analyze verify and the security exposure of these units: tests/test_packaging.py, for every shipped unit.


def test_timer_runs_every_five_minutes_spread_and_is_not_enabled_by_the_units_themselves() -> None:
    timer = parse_unit(TIMER.read_text())
    assert entries(timer, "Timer", "OnUnitActiveSec") == ["5min"]
    delay = entries(timer, "Timer", "RandomizedDelaySec")
    assert delay and delay[0] not in ("0", "")
    assert entries(timer, "Install", "WantedBy") == ["timers.target"]
    service = parse_unit(SERVICE.read_text())
    assert "WantedBy" not in keys(service)  # started by the timer only
    assert entries(service, "Service", "Type") == ["oneshot"]
    assert entries(service, "Service", "ExecStart") == ["/usr/bin/etcd-aws-cluster reconcile"]
    assert "RemainAfterExit" not in keys(service)  # or OnUnitActiveSec= would fire only once


def test_service_runs_only_where_etcd_is_active_and_the_agent_has_run() -> None:
    service = parse_unit(SERVICE.read_text())
    assert "etcd.service" in entries(service, "Unit", "Requisite")[0].split()
    assert "etcd.service" in " ".join(entries(service, "Unit", "After")).split()
    assert "/etc/sysconfig/etcd-cluster" in entries(service, "Unit", "ConditionPathExists")
    assert "!/etc/etcd-aws-cluster/disabled" in entries(service, "Unit", "ConditionPathExists")
    # The state file's directory is the unit's StateDirectory, writable under ProtectSystem=strict.
    from etcd_aws_cluster.app.settings import Settings

    state_dir = Settings.model_fields["reconcile_state_file"].default.parent
    assert entries(service, "Service", "ProtectSystem") == ["strict"]
    assert Path("/var/lib") / entries(service, "Service", "StateDirectory")[0] == state_dir
    # Nothing else is writable but the metrics file's directory, and only when it exists ('-').
    metrics_dir = Settings.model_fields["metrics_file"].default.parent
    assert entries(service, "Service", "ReadWritePaths") == [f"-{metrics_dir}"]
