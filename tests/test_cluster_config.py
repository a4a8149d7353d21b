"""[cluster] in config.ini, and the pure rules of the cluster store
(vnet.core.cluster_keys): key layout, records, serveid claims, the fence."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from vnet import config_load
from vnet.core.cluster_config import parse_etcd_url
from vnet.core.cluster_keys import (
    Keys,
    LeaseTiming,
    NodeRecord,
    ServeRecord,
    SessionRecord,
    claim_serveid,
    decode_node,
    decode_serve,
    decode_session,
    encode_node,
    encode_serve,
    encode_session,
    free_dynamic,
    prefix_end,
)
from vnet.core.config import check_route_config
from vnet.core.errors import InvalidRequest, NoFreeServeId
from vnet.core.registry import Serve, Vnet

ROUTE = "[route]\nip=127.0.0.1\nport=7749\ntoken=node-secret\n"
CLUSTER = "[cluster]\netcd=http://127.0.0.1:2379\nroute_id=a\nadvertise=127.0.0.1:7750\n"


def problems(text: str) -> list[str]:
    return [str(e) for e in check_route_config("r.ini", ROUTE + text).problems.in_order()]


def test_no_cluster_section_is_the_single_route() -> None:
    checked = check_route_config("r.ini", ROUTE)
    assert checked.ok
    assert checked.config.cluster is None
    assert checked.problems.warnings == []


def test_cluster_section_is_read() -> None:
    text = (
        "[cluster]\netcd=https://10.0.0.5:2379, https://etcd-b, https://[fd00::7]:2380\n"
        "route_id=route-a\nadvertise=route-a.example.net:7750\ntoken_env=VNET_CLUSTER\n"
        "lease_ttl=5\nprefix=prod\n"
    )
    checked = check_route_config("r.ini", ROUTE + text)
    assert checked.ok, checked.problems.in_order()
    c = checked.config.cluster
    assert c is not None
    assert c.endpoints == (("10.0.0.5", 2379), ("etcd-b", 2379), ("fd00::7", 2380))
    assert c.etcd_tls
    assert c.route_id == "route-a"
    assert c.advertise == ("route-a.example.net", 7750)
    assert (c.lease_ttl, c.resume_ttl, c.prefix) == (5, 60, "prod/")
    assert checked.problems.warnings == []


def test_cluster_mistakes_name_file_line_section_and_key() -> None:
    assert problems("[cluster]\n") == [
        "r.ini:5: [cluster] etcd: is required",
        "r.ini:5: [cluster] route_id: is required",
        "r.ini:5: [cluster] advertise: is required",
        "r.ini:5: [cluster]: routes need a token with each other: set token= (or "
        "token_env=, token_file=), never a node's token; peer_tls_cert, peer_tls_key and "
        "peer_tls_ca add mutual TLS",
    ]
    body = (
        "etcd=http://127.0.0.1:2379,https://x:1/v3\nroute_id=a b\nadvertise=0.0.0.0:7750\n"
        "token=t\nlease_ttl=1\netcd_tls_ca=/ca.pem\netcd_user=vnet\nsurprise=1\n"
    )
    assert problems("[cluster]\n" + body) == [
        "r.ini:6: [cluster] etcd: 'https://x:1/v3': give only the scheme, host and port",
        "r.ini:6: [cluster] etcd: mixes http:// and https://: one etcd cluster has one scheme",
        "r.ini:7: [cluster] route_id: 'a b': use up to 64 letters, digits, '.', '_' or '-'",
        "r.ini:8: [cluster] advertise: must be an address the other routes can reach, "
        "not a wildcard",
        "r.ini:10: [cluster] lease_ttl: 1 is out of range (2-300)",
        "r.ini:11: [cluster] etcd_tls_ca: is for https:// etcd URLs",
        "r.ini:12: [cluster] etcd_user: needs a password: etcd_password, etcd_password_env "
        "or _file",
        "r.ini:13: [cluster] surprise: unknown key (known: " + _known() + ")",
    ]
    assert problems(CLUSTER + "token=t\npeer_tls_cert=/c.pem\n") == [
        "r.ini:5: [cluster] peer_tls_key: peer_tls_cert, peer_tls_key, peer_tls_ca go "
        "together (mutual TLS between routes)"
    ]
    assert problems(CLUSTER + "token=t\ntoken_file=/t\n") == [
        "r.ini:10: [cluster] token_file: give only one of token, token_file"
    ]


def _known() -> str:
    from vnet.core.cluster_config import CLUSTER_KEYS

    return ", ".join(sorted(CLUSTER_KEYS))


def test_etcd_urls() -> None:
    assert parse_etcd_url("http://127.0.0.1:2379") == ("", ("127.0.0.1", 2379))
    assert parse_etcd_url("https://etcd/") == ("", ("etcd", 2379))
    assert parse_etcd_url("etcd:2379")[1] is None
    assert parse_etcd_url("http://etcd:99999")[1] is None
    assert parse_etcd_url("http://user@etcd:2379")[1] is None


def test_cluster_files_are_read_by_the_start_and_check(tmp_path: Path) -> None:
    ini = tmp_path / "r.ini"
    ini.write_text(
        ROUTE
        + CLUSTER
        + "token=node-secret\npeer_tls_cert=/nope/c.pem\npeer_tls_key=/nope/k.pem\n"
        + "peer_tls_ca=/nope/ca.pem\n"
    )
    loaded = config_load.load_route(str(ini), environ={})
    assert loaded.value is None
    assert [str(e) for e in loaded.errors] == [
        f"{ini}:9: [cluster] token: the cluster token is the same as [route] token: routes "
        "need a token of their own (a node holding it could pose as a route)",
        f"{ini}:10: [cluster] peer_tls_cert: cannot read /nope/c.pem: No such file or directory",
        f"{ini}:11: [cluster] peer_tls_key: cannot read /nope/k.pem: No such file or directory",
        f"{ini}:12: [cluster] peer_tls_ca: cannot read /nope/ca.pem: No such file or directory",
    ]


def test_cluster_tls_files_that_work_pass(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("route-a.example.net")
    other = trustme.CA().issue_cert("route-a.example.net")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    (tmp_path / "pw").write_text("etcd-pass\n")
    body = (
        "[cluster]\netcd=https://127.0.0.1:2379\nroute_id=a\nadvertise=127.0.0.1:7750\n"
        f"peer_tls_cert={tmp_path}/cert.pem\npeer_tls_key={tmp_path}/key.pem\n"
        f"peer_tls_ca={tmp_path}/ca.pem\netcd_tls_ca={tmp_path}/ca.pem\n"
        f"etcd_tls_cert={tmp_path}/cert.pem\netcd_tls_key={tmp_path}/KEY\n"
        f"etcd_user=vnet\netcd_password_file={tmp_path}/pw\ntoken=routes-only\n"
    )
    ini = tmp_path / "r.ini"
    ini.write_text(ROUTE + body.replace("KEY", "key.pem"))
    loaded = config_load.load_route(str(ini), environ={})
    assert loaded.errors == ()
    assert loaded.value is not None
    ini.write_text(ROUTE + body.replace("KEY", "other-key.pem"))
    errors = [str(e) for e in config_load.load_route(str(ini), environ={}).errors]
    assert errors == [
        f"{ini}:14: [cluster] etcd_tls_key: {tmp_path}/other-key.pem does not match "
        f"etcd_tls_cert {tmp_path}/cert.pem"
    ]


# --- the pure rules --------------------------------------------------------


def test_key_layout() -> None:
    keys = Keys("vnet/")
    assert keys.serve("g", 7) == b"vnet/serves/g/007"
    # A group name may hold "/": it cannot reach into another group's keys.
    assert keys.serve("a/b", 600) == b"vnet/serves/a%2Fb/600"
    assert keys.serve_key_parts(keys.serve("a/b", 600)) == ("a/b", 600)
    assert keys.serve_key_parts(keys.node("01")) is None
    assert keys.session("secret").startswith(b"vnet/sessions/")
    assert b"secret" not in keys.session("secret")
    assert prefix_end(b"vnet/serves/") == b"vnet/serves0"


def test_records_round_trip_and_malformed_ones_are_refused() -> None:
    vnet = Vnet("07", "office", "g")
    serve = Serve(9, "07", "web", "127.0.0.1", 80, "info", "udp", True)
    assert decode_node(encode_node(NodeRecord(vnet, "a"))) == NodeRecord(vnet, "a")
    record = ServeRecord(serve, "g", "a")
    assert decode_serve(encode_serve(record)) == record
    session = SessionRecord(vnet, (9, 600))
    assert decode_session(encode_session(session)) == session
    for raw in (b"", b"[]", b'{"serveid": "9"}', b"\xff"):
        with pytest.raises(InvalidRequest, match="malformed"):
            decode_serve(raw)


def test_serveid_claims_follow_the_single_routes_rules() -> None:
    other = Serve(600, "02", "ssh", "127.0.0.1", 22)
    mine = Serve(600, "01", "ssh", "127.0.0.1", 22)
    # Static held by another: refused (the first keeps it).
    assert claim_serveid(600, "01", other, [600]) is None
    # Static held by itself: replaced in place.
    own = claim_serveid(600, "01", mine, [600])
    assert own is not None
    assert own.replaces_own
    # Dynamic held by another: another free one, and the node is told.
    dyn = claim_serveid(1, "01", Serve(1, "02", "w", "127.0.0.1", 80), [1, 2])
    assert dyn is not None
    assert (dyn.serveid, dyn.reassigned) == (3, True)
    # 0: any free dynamic one; free: as asked.
    zero = claim_serveid(0, "01", None, [1])
    assert zero is not None
    assert (zero.serveid, zero.reassigned) == (2, False)
    free = claim_serveid(42, "01", None, [1])
    assert free is not None
    assert free.serveid == 42
    with pytest.raises(NoFreeServeId):
        free_dynamic(range(1, 500))
    with pytest.raises(InvalidRequest):
        claim_serveid(1000, "01", None, [])


def test_the_fence_comes_before_etcd_could_expire_the_lease() -> None:
    for ttl in (2, 10, 60):
        timing = LeaseTiming(ttl)
        assert timing.refresh_every < timing.fence_after < ttl
        assert not timing.fenced(0.0, timing.fence_after - 0.01)
        assert timing.fenced(0.0, timing.fence_after)
