"""The gRPC settings both ends of a connection need, stated once.

The route (grpc.aio server) and the nodes (channels) must agree on these: a
message cap the other side does not share fails calls with
RESOURCE_EXHAUSTED, mismatched keepalive rules end connections with GOAWAY
too_many_pings, and the stream windows bound what a stalled tunnel holds in
each process (docs/DESIGN.md, "Memory"). The .proto states the same numbers
for clients in other languages.
"""

from __future__ import annotations

from typing import Any

from vnet.core.pacing import STREAM_WINDOW

# A tunnel frame carries at most one read of a node's socket (BULK_READ) plus
# framing, or one UDP datagram (at most 65,507 bytes, vnet/core/udp.py); 4 MiB
# leaves room for other clients' larger frames, and refuses anything wildly larger.
MAX_MESSAGE = 4 * 1024 * 1024 + 1024
# The shortest keepalive interval nodes may use (tests go down to this); the
# route allows pings this often.
NODE_PING_FLOOR_MS = 500

Options = list[tuple[str, Any]]


def common_options() -> Options:
    """What the route and every node set alike."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        # Fixed stream windows, not BDP-grown ones (vnet/core/pacing.py
        # STREAM_WINDOW): they bound what a stalled tunnel holds.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", STREAM_WINDOW),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def keepalive_options(interval: float, timeout: float) -> Options:
    """Ping an idle connection every `interval` s; give it up after `timeout` s.

    Every ping, BDP probes included, must be answered within the timeout
    (http2.ping_timeout_ms): a probe in flight when the link dies would
    otherwise hold off the keepalive ping for its own 60 s default.
    """
    return [
        ("grpc.keepalive_time_ms", int(interval * 1000)),
        ("grpc.keepalive_timeout_ms", int(timeout * 1000)),
        ("grpc.http2.ping_timeout_ms", int(timeout * 1000)),
    ]
