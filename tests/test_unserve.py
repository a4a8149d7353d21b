"""unserve end to end: the original's Jupyter scenario, lifetimes, and every refusal."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.conftest import TIMEOUT, MakeNode, free_port, refused, wait_until
from tests.procs import Procs
from vnet.console.executor import Executor, Outcome
from vnet.core.config import VnetConfig
from vnet.node.node import Node, NodeTimeouts
from vnet.route.server import RunningRoute

PAGE = b"<html>jupyter stand-in</html>"


async def http_service() -> asyncio.Server:
    """Answers any request with PAGE, like a notebook server's front page."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(PAGE), PAGE))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def get(port: int) -> bytes:
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        body = (await reader.read()).partition(b"\r\n\r\n")[2]
        writer.close()
        return body


class Console:
    """An Executor whose questions are answered from a script, recording them."""

    def __init__(self, node: Node, answers: Sequence[str] = ()) -> None:
        self.out: list[str] = []
        self.err: list[str] = []
        self.asked: list[str] = []
        self.answers = list(answers)
        self.exec = Executor(node, self.out.append, self.err.append, self.ask)

    async def ask(self, prompt: str) -> str:
        self.asked.append(prompt)
        return self.answers.pop(0)

    async def run(self, line: str) -> Outcome:
        return await self.exec.run(line)


@pytest.fixture
async def nodes(make_node: MakeNode) -> dict[str, Node]:
    made: dict[str, Node] = {}
    timeouts = NodeTimeouts(connect=TIMEOUT, unserve_unused=1.0, unserve_linger=0.5)

    async def make(name: str, group: str = "g", **vnet: object) -> None:
        made[name] = await make_node(
            vnet=VnetConfig(name=name, group=group, **vnet),  # type: ignore[arg-type]
            timeouts=timeouts,
        )

    await make("home", allow_unserve=True, unserve_remote=False, unserve_num=1)
    await make("office")
    await make("stranger", group="other")
    await make("closed")  # allow_unserve defaults to false
    return made


async def test_the_original_jupyter_scenario(nodes: dict[str, Node]) -> None:
    home, office = nodes["home"], nodes["office"]
    jupyter = await http_service()
    jport = jupyter.sockets[0].getsockname()[1]
    local = free_port()
    console = Console(office, [home.vnetid, "", str(jport), "", str(local)])
    assert await console.run("unserve") == Outcome.OK, console.err
    # The original's questions, in its order, with its defaults.
    assert console.asked == [
        "to vnetid: ",
        "ip(127.0.0.1): ",
        "port: ",
        "ip(127.0.0.1): ",
        f"port({jport}): ",
    ]
    assert console.out[1] == f"vnet {home.vnetid} offers it as serveid 001"
    assert console.out[2].startswith(f"mapped 127.0.0.1:{local} -> serveid 001")
    # The browser at the office opens the notebook.
    assert await get(local) == PAGE
    assert await get(local) == PAGE
    # show serves marks it; show unserves on home has its timer.
    await console.run("show serves")
    assert any(
        line.split()[:4] == ["001", home.vnetid, f"unserve-{jport}", "unserve"]
        for line in console.out
    )
    home_console = Console(home)
    await home_console.run("show unserves")
    assert home_console.out[0].split() == ["serveid", "for", "vnet", "ip", "port", "open", "lapses"]
    assert home_console.out[1].split()[:4] == ["001", office.vnetid, "127.0.0.1", str(jport)]
    # Used, then idle: withdrawn `linger` after the last connection closed, and
    # the office's mapping ends with it.
    await wait_until(lambda: not home.unserves.offers, "the used unserve to lapse")
    await wait_until(lambda: not office.uses, "the office mapping to end")
    assert await refused(local)
    assert await home.client.list_serves() == []
    # Nothing of it reaches the config.
    assert office.config.uses == ()
    assert home.config.serves == ()
    jupyter.close()


async def test_an_unused_unserve_lapses(nodes: dict[str, Node]) -> None:
    home, office = nodes["home"], nodes["office"]
    jupyter = await http_service()
    jport = jupyter.sockets[0].getsockname()[1]
    console = Console(office)
    assert await console.run(f"unserve {home.vnetid} {jport} 0") == Outcome.OK, console.err
    assert home.unserves.offers
    await wait_until(lambda: not home.unserves.offers, "the unused unserve to lapse")
    await wait_until(lambda: not office.uses, "the office mapping to end")
    jupyter.close()


async def _refusal(office: Node, line: str) -> str:
    console = Console(office)
    assert await console.run(line) == Outcome.FAILED
    assert len(console.err) == 1, console.err
    return console.err[0]


async def test_every_refusal_is_one_clear_line(nodes: dict[str, Node]) -> None:
    home, office = nodes["home"], nodes["office"]
    h, closed = home.vnetid, nodes["closed"].vnetid

    async def names(name: str, port: int) -> list[str]:
        return {"db.internal": ["10.1.2.3"], "localhost": ["127.0.0.1"]}.get(name, [name])

    home.unserves.resolve = names
    assert await _refusal(office, f"unserve {closed} 8888") == (
        f"unserve: vnet {closed} refused: this node does not allow unserve (allow_unserve=false)"
    )
    for ip, shown in (
        ("10.0.0.5", "10.0.0.5"),
        ("::ffff:10.0.0.5", "::ffff:10.0.0.5"),
        ("db.internal", "db.internal (10.1.2.3)"),
    ):
        assert await _refusal(office, f"unserve {h} {ip} 8888") == (
            f"unserve: vnet {h} refused: {shown} is not a loopback address, and this node "
            "allows only those (unserve_remote=false)"
        )
    # Unknown, and another group's: the same answer.
    unknown = await _refusal(office, "unserve 99 8888")
    other = await _refusal(office, f"unserve {nodes['stranger'].vnetid} 8888")
    assert unknown == "unserve: no vnet '99' in this group"
    assert other == f"unserve: no vnet '{nodes['stranger'].vnetid}' in this group"
    # Over the limit (unserve_num=1).
    ok = Console(office)
    assert await ok.run(f"unserve {h} localhost 8888 0") == Outcome.OK, ok.err
    assert await _refusal(office, f"unserve {h} 8889") == (
        f"unserve: vnet {h} refused: this node has 1 unserve(s) already, its limit (unserve_num=1)"
    )


async def test_a_name_that_turns_remote_is_refused_at_dial_time(
    nodes: dict[str, Node],
) -> None:
    # Loopback when asked, elsewhere when dialled (DNS rebinding): the
    # address is checked again at each connection and the one checked is
    # the one dialled.
    home, office = nodes["home"], nodes["office"]
    jupyter = await http_service()
    jport = jupyter.sockets[0].getsockname()[1]
    answers = {"flip": ["127.0.0.1"]}

    async def names(name: str, port: int) -> list[str]:
        return answers.get(name, [name])

    home.unserves.resolve = names
    console = Console(office)
    assert await console.run(f"unserve {home.vnetid} flip {jport} 0") == Outcome.OK, console.err
    local = next(iter(office.uses.values())).port
    assert local is not None
    assert await get(local) == PAGE  # loopback now: fine
    answers["flip"] = ["10.9.9.9"]
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            await reader.read()
        writer.close()
    jupyter.close()


@pytest.mark.e2e
async def test_unserve_from_a_script(
    tmp_path: object, route: RunningRoute, make_node: MakeNode, procs: Procs
) -> None:
    """`vnet CONFIG -c "unserve 01 PORT LOCAL"` prints the serveid and the mapping,
    which lasts only as long as that process (it exits after its commands)."""
    from pathlib import Path

    from tests.procs import command, node_ini

    tmp = Path(str(tmp_path))
    jupyter = await http_service()
    jport = jupyter.sockets[0].getsockname()[1]
    home = await make_node(
        vnet=VnetConfig(name="home", allow_unserve=True), timeouts=NodeTimeouts(connect=TIMEOUT)
    )
    (tmp / "office.ini").write_text(node_ini(route.port, "[vnet]\nname=office\n"))
    local = free_port()
    rc, out, err = await procs.run(
        command("vnet"), "office.ini", "-c", f"unserve {home.vnetid} {jport} {local}"
    )
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[1] == f"vnet {home.vnetid} offers it as serveid 001"
    assert lines[2].startswith(f"mapped 127.0.0.1:{local} -> serveid 001")
    assert await refused(local)  # the process is gone, and its mapping with it
    jupyter.close()
