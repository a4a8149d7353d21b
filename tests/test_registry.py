"""The registry's serveid rules, directly (no I/O)."""

from __future__ import annotations

import pytest

from vnet.core.errors import InvalidRequest, NoFreeServeId, NotFound, ServeIdTaken
from vnet.core.registry import Registry


def _reg(registry: Registry, vnetid: str, serveid: int, name: str = "s") -> tuple[int, bool]:
    r = registry.register(vnetid, serveid, name, "127.0.0.1", 22)
    return r.serve.serveid, r.reassigned


def test_vnetids_count_up_two_digits() -> None:
    registry = Registry()
    assert [registry.add_vnet("n", "g").vnetid for _ in range(3)] == ["01", "02", "03"]


def test_zero_assigns_lowest_free_dynamic() -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g").vnetid
    assert _reg(registry, a, 0, "x") == (1, False)
    assert _reg(registry, a, 0, "y") == (2, False)


def test_dynamic_conflict_is_reassigned_and_said() -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g").vnetid
    b = registry.add_vnet("b", "g").vnetid
    assert _reg(registry, a, 5) == (5, False)
    serveid, reassigned = _reg(registry, b, 5)
    assert reassigned
    assert serveid != 5
    assert 1 <= serveid < 500
    assert registry.find("g", 5).vnetid == a


def test_static_conflict_refused_first_keeps_serving() -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g").vnetid
    b = registry.add_vnet("b", "g").vnetid
    _reg(registry, a, 700, "ssh")
    with pytest.raises(ServeIdTaken, match="static serveid 700 is already registered by vnet 01"):
        _reg(registry, b, 700)
    assert registry.find("g", 700).vnetid == a


def test_same_node_may_register_its_id_again() -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g").vnetid
    _reg(registry, a, 700, "old")
    r = registry.register(a, 700, "new", "127.0.0.1", 23)
    assert r.replaced is not None
    assert r.replaced.name == "old"
    assert registry.find("g", 700).name == "new"


def test_groups_are_separate_namespaces() -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g1").vnetid
    b = registry.add_vnet("b", "g2").vnetid
    assert _reg(registry, a, 700) == (700, False)
    assert _reg(registry, b, 700) == (700, False)
    assert _reg(registry, a, 5) == (5, False)
    assert _reg(registry, b, 5) == (5, False)
    with pytest.raises(NotFound):
        registry.find("g2", 1)
    assert [v.vnetid for v in registry.vnets("g1")] == [a]


@pytest.mark.parametrize("serveid", [1000, 5000])
def test_out_of_range_serveid(serveid: int) -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g").vnetid
    with pytest.raises(InvalidRequest, match="out of range"):
        _reg(registry, a, serveid)


@pytest.mark.parametrize("port", [0, 70000])
def test_bad_port(port: int) -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g").vnetid
    with pytest.raises(InvalidRequest, match="port"):
        registry.register(a, 0, "s", "127.0.0.1", port)


def test_udp_is_kept_and_other_types_refused() -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g").vnetid
    assert registry.register(a, 0, "s", "127.0.0.1", 53, type="udp").serve.type == "udp"
    assert registry.register(a, 0, "t", "127.0.0.1", 53).serve.type == "tcp"
    with pytest.raises(InvalidRequest, match="tcp or udp"):
        registry.register(a, 0, "s", "127.0.0.1", 53, type="sctp")


def test_dynamic_range_exhausted() -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g").vnetid
    for _ in range(499):
        registry.register(a, 0, "s", "127.0.0.1", 1)
    with pytest.raises(NoFreeServeId):
        registry.register(a, 0, "s", "127.0.0.1", 1)
    # Static ids are still available.
    assert _reg(registry, a, 999) == (999, False)


def test_remove_vnet_withdraws_its_serves_only() -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g").vnetid
    b = registry.add_vnet("b", "g").vnetid
    _reg(registry, a, 700)
    _reg(registry, a, 3)
    _reg(registry, b, 701)
    gone = registry.remove_vnet(a)
    assert [s.serveid for s in gone] == [3, 700]
    assert [s.serveid for s in registry.serves("g")] == [701]
    with pytest.raises(NotFound):
        registry.unregister(a, 701)


def test_unregister_someone_elses_serve_is_not_found() -> None:
    registry = Registry()
    a = registry.add_vnet("a", "g").vnetid
    b = registry.add_vnet("b", "g").vnetid
    _reg(registry, a, 700)
    with pytest.raises(NotFound):
        registry.unregister(b, 700)
