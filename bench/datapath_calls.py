"""The tunnel calls of `bench.datapath`, one class per variant (see that module's doc).

Each has the same two methods, so the measuring code is the same for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc._cython import cygrpc  # the core API, for the cq variant

from bench.procs import BenchError
from vnet import wire
from vnet.node.client import CHANNEL_OPTIONS, TunnelCall

TIMEOUT = 60.0
T = TypeVar("T")


# --- the tunnel calls, one class per variant, each with the same two methods -------------------
#
# open(md) starts a Dial or Accept call; exchange(tunnel, frame) writes a frame and returns the
# next one read (office); serve(tunnel) answers every data frame with its payload (home). Both run
# as coroutines on the main loop, whatever thread the calls live in.


def _reply(raw: bytes) -> bytes | None:
    """Home's answer to a frame: the same payload in a new data frame (decoded and re-encoded, as
    a node does on its way to and from the socket); None at a fin or reset."""
    kind, payload = wire.decode_frame(raw)
    if kind is not wire.FrameKind.DATA:
        return None
    return wire.encode_data(bytes(payload))  # type: ignore[arg-type]


class Aio:
    """grpc.aio on the main loop (the node today)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)

    def open(self, method: str, md: Sequence[tuple[str, str]]) -> Any:
        return TunnelCall(self.channel.stream_stream(method)(metadata=md))

    async def exchange(self, call: TunnelCall, frame: bytes) -> bytes | None:
        await call.write(frame)
        return await call.read()

    async def serve(self, call: TunnelCall) -> None:
        while (raw := await call.read()) is not None:
            answer = _reply(raw)
            if answer is None:
                return
            await call.write(answer)


class _DataLoop:
    """A second event loop, in a thread of its own, for the tunnel channel."""

    def __init__(self) -> None:
        self.loop = new_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        threading.Thread(target=run, name="data-loop", daemon=True).start()
        if not ready.wait(TIMEOUT):
            raise BenchError("the data loop did not start")

    def run(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Run coro on the data loop; awaitable from the main loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


class AioThread:
    """grpc.aio on a data loop in its own thread; the frame handling there too."""

    def __init__(self, address: str) -> None:
        self.data = _DataLoop()

        async def make() -> grpc.aio.Channel:
            return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)

        self.channel = asyncio.run_coroutine_threadsafe(make(), self.data.loop).result(TIMEOUT)
        self.aio = Aio.__new__(Aio)
        self.aio.channel = self.channel

    def open(self, method: str, md: Sequence[tuple[str, str]]) -> Any:
        async def make() -> TunnelCall:
            return self.aio.open(method, md)  # type: ignore[no-any-return]

        return asyncio.run_coroutine_threadsafe(make(), self.data.loop).result(TIMEOUT)

    async def exchange(self, call: TunnelCall, frame: bytes) -> bytes | None:
        return await self.data.run(self.aio.exchange(call, frame))

    async def serve(self, call: TunnelCall) -> None:
        await self.data.run(self.aio.serve(call))


class AioHop(AioThread):
    """grpc.aio on the data loop, the frame handling on the main loop: every read and write hops."""

    async def exchange(self, call: TunnelCall, frame: bytes) -> bytes | None:
        await self.data.run(call.write(frame))
        return await self.data.run(call.read())

    async def serve(self, call: TunnelCall) -> None:
        while (raw := await self.data.run(call.read())) is not None:
            answer = _reply(raw)
            if answer is None:
                return
            await self.data.run(call.write(answer))


@dataclass
class SyncCall:
    """One synchronous stream call: frames go in through a queue, come out of the iterator."""

    requests: queue.SimpleQueue[bytes | None]
    responses: Iterator[bytes]
    call: Any = None

    def write(self, frame: bytes) -> None:
        self.requests.put(frame)

    def read(self) -> bytes | None:
        try:
            return next(self.responses)
        except StopIteration:
            return None


class Sync:
    """gRPC's synchronous API: the frame handled in the thread that read it."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)

    def open(self, method: str, md: Sequence[tuple[str, str]]) -> SyncCall:
        requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        call = self.channel.stream_stream(method)(iter(requests.get, None), metadata=md)
        return SyncCall(requests, call, call)

    def exchange_blocking(self, call: SyncCall, frame: bytes) -> bytes | None:
        call.write(frame)
        return call.read()

    def serve_blocking(self, call: SyncCall) -> None:
        with contextlib.suppress(grpc.RpcError, BenchError):
            while (raw := call.read()) is not None:
                answer = _reply(raw)
                if answer is None:
                    return
                call.write(answer)

    async def serve(self, call: SyncCall) -> None:
        # A thread of its own per tunnel (the default executor has a handful of workers).
        threading.Thread(target=self.serve_blocking, args=(call,), daemon=True).start()


class SyncLoop(Sync):
    """The synchronous calls, each frame handed to the main loop (a reader thread per tunnel)."""

    def open(self, method: str, md: Sequence[tuple[str, str]]) -> SyncCall:
        loop = asyncio.get_running_loop()
        call = super().open(method, md)
        inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

        def pump() -> None:
            try:
                for raw in call.responses:
                    loop.call_soon_threadsafe(inbox.put_nowait, raw)
            except grpc.RpcError:
                pass
            loop.call_soon_threadsafe(inbox.put_nowait, None)

        threading.Thread(target=pump, daemon=True).start()
        call.responses = _queue_iter(inbox)  # type: ignore[assignment]
        return call

    async def exchange(self, call: SyncCall, frame: bytes) -> bytes | None:
        call.write(frame)
        return await call.responses.get()  # type: ignore[attr-defined,no-any-return]

    async def serve(self, call: SyncCall) -> None:
        inbox: asyncio.Queue[bytes | None] = call.responses  # type: ignore[assignment]
        while (raw := await inbox.get()) is not None:
            answer = _reply(raw)
            if answer is None:
                return
            call.write(answer)


class CqCall:
    """One call on gRPC's core API (grpc._cython.cygrpc, private): a "segregated" call with a
    completion queue of its own, which the thread using it polls itself, so a completed read
    returns in that thread with no other thread in between. What grpcio's own
    SingleThreadedUnaryStream option does, for a bidi stream; one thread per call, so a call's
    reads and writes take turns (enough for request/response)."""

    __slots__ = ("call",)

    def __init__(self, call: Any) -> None:
        self.call = call

    def _wait(self, want: Any) -> bytes | None:
        """Until the operation `want` completes; a receive's message (None: the stream ended)."""
        while True:
            event = self.call.next_event()
            for op in event.batch_operations:
                kind = op.type()
                if kind == want:
                    return op.message() if want == cygrpc.OperationType.receive_message else b""
                if kind == cygrpc.OperationType.receive_status_on_client:
                    return None

    def write(self, frame: bytes) -> None:
        self.call.operate((cygrpc.SendMessageOperation(frame, 0),), None)
        if self._wait(cygrpc.OperationType.send_message) is None:
            raise BenchError("the tunnel ended")

    def read(self) -> bytes | None:
        self.call.operate((cygrpc.ReceiveMessageOperation(0),), None)
        return self._wait(cygrpc.OperationType.receive_message)

    def cancel(self) -> None:
        self.call.cancel(cygrpc.StatusCode.cancelled, "closed")


class Cq(Sync):
    """Each tunnel a CqCall, driven by a thread of its own."""

    def open(self, method: str, md: Sequence[tuple[str, str]]) -> CqCall:  # type: ignore[override]
        ops = (
            (cygrpc.SendInitialMetadataOperation(tuple(md), 0),),
            (cygrpc.ReceiveStatusOnClientOperation(0),),
            (cygrpc.ReceiveInitialMetadataOperation(0),),
        )
        call = self.channel._channel.segregated_call(  # type: ignore[attr-defined]
            cygrpc.PropagationConstants.GRPC_PROPAGATE_DEFAULTS,
            method.encode(),
            None,
            None,
            tuple(md),
            None,
            tuple((batch, None) for batch in ops),
            cygrpc.build_census_context(),
            None,
        )
        return CqCall(call)


class CqDuplex:
    """A CqCall shaped as a node's tunnel would need it: one thread polls the call's queue (and
    would write each payload to the local socket itself; here it hands it to `read`), the other
    writes (it would read the local socket) and waits for its write to complete, which the
    polling thread signals. Two threads per tunnel, so both directions can run at once."""

    __slots__ = ("call", "inbox", "sent")

    def __init__(self, call: Any) -> None:
        self.call = call
        self.inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.sent = threading.Semaphore(0)
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        receive = (cygrpc.ReceiveMessageOperation(0),)
        self.call.operate(receive, None)
        while True:
            event = self.call.next_event()
            for op in event.batch_operations:
                kind = op.type()
                if kind == cygrpc.OperationType.send_message:
                    self.sent.release()
                elif kind == cygrpc.OperationType.receive_message:
                    message = op.message()
                    self.inbox.put(message)
                    if message is not None:
                        self.call.operate(receive, None)
                elif kind == cygrpc.OperationType.receive_status_on_client:
                    self.inbox.put(None)
                    self.sent.release()
                    return

    def write(self, frame: bytes) -> None:
        self.call.operate((cygrpc.SendMessageOperation(frame, 0),), None)
        self.sent.acquire()

    def read(self) -> bytes | None:
        return self.inbox.get()

    def cancel(self) -> None:
        self.call.cancel(cygrpc.StatusCode.cancelled, "closed")


class Cq2(Cq):
    """Each tunnel a CqDuplex."""

    def open(self, method: str, md: Sequence[tuple[str, str]]) -> CqDuplex:  # type: ignore[override]
        return CqDuplex(super().open(method, md).call)


class SharedCall:
    """A call on the channel's one completion queue, its frames handled by the thread that polls
    it (CqShared): what a data path pays with no thread hand-over at all."""

    __slots__ = ("call", "on_message", "sending", "next_frame")

    def __init__(self) -> None:
        self.call: Any = None
        # Run in the polling thread with each frame read (None: the stream ended).
        self.on_message: Callable[[bytes | None], None] = lambda _: None
        self.sending = False
        self.next_frame: bytes | None = None

    def send(self, frame: bytes) -> None:
        """Write frame once the write under way (if any) has completed: one at a time."""
        if self.sending:
            self.next_frame = frame
            return
        self.sending = True
        self.call.operate((cygrpc.SendMessageOperation(frame, 0),), self)

    def receive(self) -> None:
        self.call.operate((cygrpc.ReceiveMessageOperation(0),), self)

    def completed(self, op: Any) -> None:
        kind = op.type()
        if kind == cygrpc.OperationType.send_message:
            self.sending = False
            if self.next_frame is not None:
                frame, self.next_frame = self.next_frame, None
                self.send(frame)
        elif kind == cygrpc.OperationType.receive_message:
            self.on_message(op.message())
        elif kind == cygrpc.OperationType.receive_status_on_client:
            self.on_message(None)

    def cancel(self) -> None:
        self.call.cancel(cygrpc.StatusCode.cancelled, "closed")


class CqShared(Sync):
    """Every call of the process on the channel's completion queue, polled by one thread that
    also handles the frames (home's echo, office's next request): the floor of any design in
    which a polling thread does the data path's work itself. Not yet a node's shape: a node's
    thread would also have to write its sockets, and the loop reading them would start the
    writes."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.raw = self.channel._channel  # type: ignore[attr-defined]
        self.lock = threading.Lock()
        self.polling = False

    def open(self, method: str, md: Sequence[tuple[str, str]]) -> SharedCall:  # type: ignore[override]
        shared = SharedCall()
        ops = (
            (cygrpc.SendInitialMetadataOperation(tuple(md), 0),),
            (cygrpc.ReceiveStatusOnClientOperation(0),),
            (cygrpc.ReceiveInitialMetadataOperation(0),),
        )
        with self.lock:
            shared.call = self.raw.integrated_call(
                cygrpc.PropagationConstants.GRPC_PROPAGATE_DEFAULTS,
                method.encode(),
                None,
                None,
                tuple(md),
                None,
                tuple((batch, shared) for batch in ops),
                cygrpc.build_census_context(),
                None,
            )
            if not self.polling:
                self.polling = True
                threading.Thread(target=self._poll, daemon=True).start()
        return shared

    def _poll(self) -> None:
        while True:
            event = self.raw.next_call_event()
            if event.completion_type == cygrpc.CompletionType.queue_timeout:
                continue
            for op in event.batch_operations:
                event.tag.completed(op)

    async def serve(self, call: SharedCall) -> None:  # type: ignore[override]
        def echo(raw: bytes | None) -> None:
            answer = None if raw is None else _reply(raw)
            if answer is not None:
                call.send(answer)
                call.receive()

        call.on_message = echo
        call.receive()

    def ping(self, call: SharedCall, frame: bytes, rounds: int) -> Future[list[float]]:
        """rounds round trips, each started by the polling thread on the last one's reply."""
        done: Future[list[float]] = Future()
        times: list[float] = []
        started = [0.0]

        def go() -> None:
            started[0] = time.perf_counter()
            call.send(frame)
            call.receive()

        def reply(raw: bytes | None) -> None:
            if done.done():
                # The call's end, once the caller closed it.
                return
            times.append(time.perf_counter() - started[0])
            try:
                check(raw, frame)
            except BenchError as exc:
                done.set_exception(exc)
                return
            if len(times) < rounds:
                go()
            else:
                done.set_result(times)

        call.on_message = reply
        go()
        return done

    def many(self, calls: list[SharedCall], frame: bytes, stop: float) -> Future[int]:
        """Every call does request/response until stop; the requests done."""
        done: Future[int] = Future()
        counts = [0]
        left = [len(calls)]

        def on(call: SharedCall) -> Callable[[bytes | None], None]:
            def reply(raw: bytes | None) -> None:
                if done.done():
                    return
                try:
                    check(raw, frame)
                except BenchError as exc:
                    if not done.done():
                        done.set_exception(exc)
                    return
                counts[0] += 1
                if time.perf_counter() < stop:
                    call.send(frame)
                    call.receive()
                    return
                left[0] -= 1
                if not left[0]:
                    done.set_result(counts[0])

            return reply

        for call in calls:
            call.on_message = on(call)
            call.send(frame)
            call.receive()
        return done


def _queue_iter(inbox: asyncio.Queue[bytes | None]) -> Any:
    return inbox


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def transport(variant: str, address: str) -> Any:
    kinds: dict[str, Callable[[str], Any]] = {
        "aio": Aio,
        "aio-thread": AioThread,
        "aio-hop": AioHop,
        "sync": Sync,
        "sync-loop": SyncLoop,
        "cq": Cq,
        "cq-2t": Cq2,
        "cq-shared": CqShared,
    }
    return kinds[variant](address)


def check(reply: bytes | None, frame: bytes) -> None:
    """Every answer byte for byte: home echoes each payload in a frame of its own."""
    if reply is None:
        raise BenchError("the tunnel ended")
    if reply != frame:
        kind, what = wire.decode_frame(reply)
        if kind is wire.FrameKind.RESET:
            raise BenchError(f"the tunnel was reset: {what!s}")
        raise BenchError(f"a {len(frame)}-byte frame came back as {len(reply)} other bytes")
