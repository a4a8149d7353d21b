"""[admin] in config.ini: its token, its dashboard, and the mistakes the start refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from tests.conftest import MakeRoute
from tests.test_metrics import _scrape
from vnet import config_load
from vnet.core.config import check_route_config
from vnet.route.security import RouteSecurity
from vnet.wire.admin_messages import AdminStub

ROUTE = "[route]\nip=127.0.0.1\nport=7749\n"


def problems(text: str) -> list[str]:
    return [str(e) for e in check_route_config("r.ini", ROUTE + text).problems.in_order()]


def test_admin_section_is_read() -> None:
    checked = check_route_config("r.ini", ROUTE + "[admin]\ntoken=a1\nweb=127.0.0.1:7750\n")
    assert checked.ok
    assert checked.config.admin.token == "a1"
    assert checked.config.admin.web == ("127.0.0.1", 7750)
    assert check_route_config("r.ini", ROUTE).config.admin.web is None


def test_admin_mistakes_name_file_line_section_and_key() -> None:
    assert problems("[admin]\nweb=127.0.0.1:7750\n") == [
        "r.ini:5: [admin] web: the dashboard signs in with the admin token, and there is "
        "none: set [admin] token= (or token_env=, token_file=)"
    ]
    assert problems("[admin]\nweb=0.0.0.0:7750\n") == [
        "r.ini:5: [admin] web: the dashboard signs in with the admin token, and there is none "
        "(and 0.0.0.0 is reachable from other machines): set [admin] token= (or token_env=, "
        "token_file=)"
    ]
    assert problems("[admin]\ntoken=a\ntoken_env=B\n") == [
        "r.ini:6: [admin] token_env: give only one of token, token_env"
    ]
    assert (
        problems("[admin]\nweb=nowhere\n")[0] == "r.ini:5: [admin] web: 'nowhere' is not HOST:PORT"
    )
    [unknown] = problems("[admin]\ntokn=a\n")
    assert unknown.startswith("r.ini:5: [admin] tokn: unknown key")


def test_admin_token_must_not_be_a_node_token(tmp_path: Path) -> None:
    path = tmp_path / "route.ini"
    path.write_text(ROUTE + "[group.team]\ntoken=same\n[admin]\ntoken=same\n")
    loaded = config_load.load_route(str(path), environ={})
    assert loaded.value is None
    assert [str(e) for e in loaded.errors] == [
        f"{path}:7: [admin] token: the admin token is the same as [group.team] token: "
        "give admins a token of their own"
    ]


def test_admin_token_from_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "route.ini"
    path.write_text(ROUTE + "[admin]\ntoken_file=nope.txt\n")
    [problem] = config_load.load_route(str(path), environ={}).errors
    assert str(problem).startswith(f"{path}:5: [admin] token_file: cannot read nope.txt")
    path.write_text(ROUTE + "[admin]\ntoken_env=VNET_TEST_ADMIN\n")
    loaded = config_load.load_route(str(path), environ={"VNET_TEST_ADMIN": "from-env"})
    assert loaded.value is not None
    assert loaded.value[1].admin_token == "from-env"


async def test_admin_actions_are_counted_in_metrics(make_route: MakeRoute) -> None:
    route = await make_route(security=RouteSecurity(admin_token="m1"), metrics=("127.0.0.1", 0))
    assert route.metrics is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{route.port}") as ch:
        good = AdminStub(ch, [("authorization", "Bearer m1")])
        bad = AdminStub(ch, [("authorization", "Bearer m2")])
        await good.drain(1.0)
        await good.drain(0, undo=True)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await bad.kick("01")
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    samples = await asyncio.to_thread(_scrape, route.metrics.port)
    counted = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "vnet_admin_actions_total"
    }
    assert counted == {
        (("action", "drain"), ("result", "ok")): 1.0,
        (("action", "undrain"), ("result", "ok")): 1.0,
        (("action", "kick"), ("result", "failed")): 2.0,
    }
