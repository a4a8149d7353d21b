"""A client written from the .proto alone, not from the node's code.

It speaks to the route the way a hand-written client in any language would,
so the security tests check the route, not our own node's good manners.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from vnetrpc.v1 import route_pb2 as pb
from vnetrpc.v1 import route_pb2_grpc as pb_grpc

DIAL = "/vnetrpc.v1.RouteService/Dial"
ACCEPT = "/vnetrpc.v1.RouteService/Accept"


class Raw:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.channel = grpc.aio.insecure_channel(
            f"{host}:{port}",
            # Separate connections per client, as separate programs would have.
            options=[("grpc.use_local_subchannel_pool", 1)],
        )
        self.stub = pb_grpc.RouteServiceStub(self.channel)

    @staticmethod
    def md(token: str | None = None, session: str | None = None, **extra: str) -> Any:
        out: list[tuple[str, str]] = []
        if token is not None:
            out.append(("authorization", f"Bearer {token}"))
        if session is not None:
            out.append(("vnet-session", session))
        out.extend((k.replace("_", "-"), v) for k, v in extra.items())
        return tuple(out)

    async def join(self, token: str | None, group: str = "a", name: str = "raw") -> Any:
        return await self.stub.Join(
            pb.JoinRequest(name=name, group=group), metadata=self.md(token), timeout=5
        )

    async def join_and_serve(
        self, token: str | None, serveid: int, group: str = "a", name: str = "raw"
    ) -> tuple[Any, Any, Any]:
        """Join, open the control stream (read its snapshot) and register a
        serve, as a node does: (join response, metadata, control call)."""
        joined = await self.join(token, group=group, name=name)
        md = self.md(token, joined.session)
        control = self.stub.Control(pb.ControlRequest(), metadata=md)
        await control.read()
        await self.stub.RegisterServe(
            pb.RegisterServeRequest(serveid=serveid, name="ssh", ip="127.0.0.1", port=22),
            metadata=md,
            timeout=5,
        )
        return joined, md, control

    def dial(self, metadata: Any) -> Any:
        return self.channel.stream_stream(DIAL)(metadata=metadata, timeout=10)

    def accept(self, metadata: Any) -> Any:
        return self.channel.stream_stream(ACCEPT)(metadata=metadata, timeout=10)

    async def close(self) -> None:
        await self.channel.close()


async def status_of(coro: Any) -> tuple[grpc.StatusCode, str]:
    """The status a call fails with (asserting it does fail)."""
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded")


async def stream_status(call: Any, send: bytes | None = None) -> tuple[grpc.StatusCode, str]:
    """The status a raw tunnel stream ends with."""
    try:
        if send is not None:
            await call.write(send)
        async with asyncio.timeout(10):
            while await call.read() is not grpc.aio.EOF:
                pass
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""
