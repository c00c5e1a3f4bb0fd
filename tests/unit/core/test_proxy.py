"""Proxy mode's client configuration as a pure function: which members, which variables, validated values."""

from __future__ import annotations

from pathlib import Path

import pytest

from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core import envfile, proxy, view
from etcd_aws_cluster.core.model import (
    AsgInstance,
    AsgView,
    Endpoints,
    EtcdFailure,
    Identity,
    Member,
    MemberList,
    Probe,
)
from etcd_aws_cluster.core.proxy import KEYS, Cluster, from_asg, render, variables

EP = Endpoints()
ME = Identity("i-0ffffffffffffffff", "10.1.0.9", "us-east-1")
IDS = ["i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c"]
IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
ASG = AsgView("etcd", 3, tuple(AsgInstance(i, "InService", ip) for i, ip in zip(IDS, IPS)))


def member(n: int, started: bool = True) -> Member:
    return Member(
        0x100 + n,
        IDS[n] if started else "",
        (EP.peer_url(IPS[n]),),
        (EP.client_url(IPS[n]),) if started else (),
    )


def from_members(members: list[Member], asg: AsgView) -> Cluster:
    return proxy.from_members(view.ClusterView(asg, EP, (), tuple(sorted(members, key=lambda m: m.id)), (7,), False))


def discover(asg: AsgView, probes: list[Probe], endpoints: Endpoints) -> Cluster | None:
    return proxy.discover(view.build(asg, probes, endpoints))


def test_from_the_member_list() -> None:
    cluster = from_members([member(2), member(0), member(1, started=False)], ASG)
    assert cluster.source == "member list"
    # the unstarted member is listed under the instance that owns its peer URL, as its agent will name it
    assert cluster.initial_cluster == (
        (IDS[0], "http://10.0.0.1:2380"),
        (IDS[1], "http://10.0.0.2:2380"),
        (IDS[2], "http://10.0.0.3:2380"),
    )
    assert cluster.client_urls == ("http://10.0.0.1:2379", "http://10.0.0.3:2379")  # only started members serve


def test_unstarted_member_of_no_instance_is_named_by_its_id_as_the_boot_plan_names_it() -> None:
    stranger = Member(0xABC, "", ("http://10.7.7.7:2380",))
    assert ("member-abc", "http://10.7.7.7:2380") in from_members([member(0), stranger], ASG).initial_cluster


def test_from_the_asg_counts_only_inservice_and_pending_instances_with_an_ip() -> None:
    asg = AsgView(
        "etcd",
        3,
        (
            AsgInstance(IDS[0], "InService", IPS[0]),
            AsgInstance(IDS[1], "Pending", None),
            AsgInstance(IDS[2], "Standby", IPS[2]),
            AsgInstance("i-0000000000000000d", "Pending:Wait", "10.0.0.4"),
        ),
    )
    cluster = from_asg(asg, Endpoints("https", "https", 2479, 2480))
    assert cluster == Cluster(
        ((IDS[0], "https://10.0.0.1:2480"), ("i-0000000000000000d", "https://10.0.0.4:2480")),
        ("https://10.0.0.1:2479", "https://10.0.0.4:2479"),
        "ASG",
    )


def test_discover_prefers_the_member_list_then_the_asg() -> None:
    members = (member(0), member(1))
    answered = [Probe(IDS[0], IPS[0], answer=MemberList(members, 7)), Probe(IDS[2], IPS[2], error=EtcdFailure.REFUSED)]
    assert discover(ASG, answered, EP) == from_members(members, ASG)
    silent = [Probe(i, ip, error=EtcdFailure.REFUSED) for i, ip in zip(IDS, IPS)]
    assert discover(ASG, silent, EP) == from_asg(ASG, EP)
    assert discover(AsgView("etcd", 0, ()), [], EP) is None


def test_discover_takes_the_list_most_members_agree_on() -> None:
    full, partial = (member(0), member(1), member(2)), (member(0), member(1))
    probes = [Probe(IDS[n], IPS[n], answer=MemberList(m, 7)) for n, m in enumerate([partial, full, full])]
    assert len(discover(ASG, probes, EP).initial_cluster) == 3  # type: ignore[union-attr]


def test_discover_refuses_two_clusters() -> None:
    probes = [Probe(IDS[n], IPS[n], answer=MemberList((member(n),), 7 + n)) for n in range(2)]
    with pytest.raises(UnsafeError, match="different etcd clusters"):
        discover(ASG, probes, EP)


def test_variables_and_rendering() -> None:
    cluster = from_members([member(0), member(1)], ASG)
    values = variables(ME, cluster, EP, listen_loopback=True)
    assert values == {
        "ETCD_NAME": ME.instance_id,
        "ETCD_PROXY": "on",
        "ETCD_INITIAL_CLUSTER": f"{IDS[0]}=http://10.0.0.1:2380,{IDS[1]}=http://10.0.0.2:2380",
        "ETCD_LISTEN_CLIENT_URLS": "http://10.1.0.9:2379,http://127.0.0.1:2379",
        "ETCDCTL_ENDPOINTS": "http://10.0.0.1:2379,http://10.0.0.2:2379",
    }
    text = render(values)
    assert text.startswith("# Written by etcd-aws-cluster")
    assert [line.split("=", 1)[0] for line in text.splitlines()[1:]] == list(KEYS)
    assert envfile.parse(text) == values
    assert variables(ME, cluster, EP, listen_loopback=False)["ETCD_LISTEN_CLIENT_URLS"] == "http://10.1.0.9:2379"


def test_tls_files_only_when_set() -> None:
    cluster = from_members([member(0)], ASG)
    tls = {"ETCDCTL_CACERT": Path("/etc/etcd/ca.pem"), "ETCDCTL_CERT": None, "ETCDCTL_KEY": None}
    values = variables(ME, cluster, EP, listen_loopback=False, tls_files=tls)
    assert values["ETCDCTL_CACERT"] == "/etc/etcd/ca.pem"
    assert "ETCDCTL_CERT" not in values and "ETCDCTL_KEY" not in values
    assert render(values).endswith("ETCDCTL_CACERT=/etc/etcd/ca.pem\n")


@pytest.mark.parametrize("bad", ["/etc/etcd/my ca.pem", "/etc/ca.pem\nETCD_PROXY=off", "$HOME/ca.pem", "'x'"])
def test_every_value_is_validated(bad: str) -> None:
    values = variables(ME, from_members([member(0)], ASG), EP, listen_loopback=False)
    values["ETCDCTL_CACERT"] = bad
    with pytest.raises(UnsafeError, match="ETCDCTL_CACERT"):
        render(values)


def test_render_needs_the_client_keys() -> None:
    with pytest.raises(ValueError, match="ETCD_PROXY"):
        render({"ETCD_NAME": ME.instance_id})
    values = variables(ME, from_members([member(0)], ASG), EP, listen_loopback=False)
    with pytest.raises(ValueError):
        render({**values, "ETCD_INITIAL_CLUSTER_STATE": "new"})


def test_gateway_flavour_for_etcd_36_and_later() -> None:
    from etcd_aws_cluster.core.proxy import GATEWAY, V2_PROXY, flavour_for

    assert [flavour_for(v) for v in [(3, 4, 23), (3, 5, 30), (3, 6, 0), (3, 7, 1), None]] == [
        V2_PROXY,
        V2_PROXY,
        GATEWAY,
        GATEWAY,
        V2_PROXY,
    ]
    cluster = from_members([member(0), member(2)], ASG)
    values = variables(ME, cluster, EP, listen_loopback=False, flavour=GATEWAY)
    assert values == {
        "ETCD_NAME": ME.instance_id,
        "ETCD_GATEWAY_ENDPOINTS": "10.0.0.1:2379,10.0.0.3:2379",
        "ETCD_GATEWAY_LISTEN_ADDR": "10.1.0.9:2379",
        "ETCDCTL_ENDPOINTS": "http://10.0.0.1:2379,http://10.0.0.3:2379",
    }
    assert (
        variables(ME, cluster, EP, listen_loopback=True, flavour=GATEWAY)["ETCD_GATEWAY_LISTEN_ADDR"] == "0.0.0.0:2379"
    )
    text = render(values)
    assert "ETCD_PROXY" not in text and "ETCD_INITIAL_CLUSTER" not in text  # nothing that starts a member
    assert text.endswith("ETCDCTL_ENDPOINTS=http://10.0.0.1:2379,http://10.0.0.3:2379\n")


TLS = {
    "ETCDCTL_CACERT": Path("/etc/etcd/ca.pem"),
    "ETCDCTL_CERT": Path("/etc/etcd/client.pem"),
    "ETCDCTL_KEY": Path("/etc/etcd/client-key.pem"),
}
HTTPS = Endpoints("https", "https", 2379, 2380)
TWO = Cluster(
    ((IDS[0], "https://10.0.0.1:2380"), (IDS[1], "https://10.0.0.2:2380")),
    ("https://10.0.0.1:2379", "https://10.0.0.2:2379"),
    "member list",
)
HEADER = "# Written by etcd-aws-cluster at boot (proxy mode: a client of the cluster); changes are overwritten.\n"


@pytest.mark.parametrize(
    ("flavour", "loopback", "tls", "expected"),
    [
        (
            proxy.V2_PROXY,
            True,
            TLS,
            HEADER + "ETCD_NAME=i-0ffffffffffffffff\n"
            "ETCD_PROXY=on\n"
            "ETCD_INITIAL_CLUSTER=i-0000000000000000a=https://10.0.0.1:2380,i-0000000000000000b=https://10.0.0.2:2380\n"
            "ETCD_LISTEN_CLIENT_URLS=https://10.1.0.9:2379,https://127.0.0.1:2379\n"
            "ETCDCTL_ENDPOINTS=https://10.0.0.1:2379,https://10.0.0.2:2379\n"
            "ETCDCTL_CACERT=/etc/etcd/ca.pem\n"
            "ETCDCTL_CERT=/etc/etcd/client.pem\n"
            "ETCDCTL_KEY=/etc/etcd/client-key.pem\n",
        ),
        (
            proxy.V2_PROXY,
            False,
            None,
            HEADER + "ETCD_NAME=i-0ffffffffffffffff\n"
            "ETCD_PROXY=on\n"
            "ETCD_INITIAL_CLUSTER=i-0000000000000000a=https://10.0.0.1:2380,i-0000000000000000b=https://10.0.0.2:2380\n"
            "ETCD_LISTEN_CLIENT_URLS=https://10.1.0.9:2379\n"
            "ETCDCTL_ENDPOINTS=https://10.0.0.1:2379,https://10.0.0.2:2379\n",
        ),
        (
            proxy.GATEWAY,
            True,
            TLS,
            HEADER + "ETCD_NAME=i-0ffffffffffffffff\n"
            "ETCD_GATEWAY_ENDPOINTS=10.0.0.1:2379,10.0.0.2:2379\n"
            "ETCD_GATEWAY_LISTEN_ADDR=0.0.0.0:2379\n"
            "ETCDCTL_ENDPOINTS=https://10.0.0.1:2379,https://10.0.0.2:2379\n"
            "ETCDCTL_CACERT=/etc/etcd/ca.pem\n"
            "ETCDCTL_CERT=/etc/etcd/client.pem\n"
            "ETCDCTL_KEY=/etc/etcd/client-key.pem\n",
        ),
        (
            proxy.GATEWAY,
            False,
            None,
            HEADER + "ETCD_NAME=i-0ffffffffffffffff\n"
            "ETCD_GATEWAY_ENDPOINTS=10.0.0.1:2379,10.0.0.2:2379\n"
            "ETCD_GATEWAY_LISTEN_ADDR=10.1.0.9:2379\n"
            "ETCDCTL_ENDPOINTS=https://10.0.0.1:2379,https://10.0.0.2:2379\n",
        ),
    ],
)
def test_the_proxy_files_are_byte_for_byte_what_they_have_always_been(
    flavour: str, loopback: bool, tls: dict[str, Path | None] | None, expected: str
) -> None:
    values = variables(ME, TWO, HTTPS, listen_loopback=loopback, tls_files=tls, flavour=flavour)
    assert render(values) == expected


@pytest.mark.parametrize(
    ("values", "needs"),
    [
        ({"ETCD_NAME": "i-0ffffffffffffffff"}, "proxy env file needs ETCD_NAME, ETCD_PROXY"),
        (
            {"ETCD_NAME": "i-0ffffffffffffffff", "ETCD_GATEWAY_ENDPOINTS": "10.0.0.1:2379"},
            "proxy env file needs ETCD_NAME, ETCD_GATEWAY_ENDPOINTS, ETCD_GATEWAY_LISTEN_ADDR, ETCDCTL_ENDPOINTS and "
            "optionally ETCDCTL_CACERT",
        ),
    ],
)
def test_render_names_the_keys_each_proxy_file_needs(values: dict[str, str], needs: str) -> None:
    with pytest.raises(ValueError, match=needs):
        render(values)
