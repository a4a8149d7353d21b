"""`python -m bench.wan.source --port P`: a download service for the WAN benchmark.

Every connection gets an endless stream of bytes until the client closes it; whatever the
client sends is ignored. One thread per connection with blocking sendall() of a prebuilt
buffer, so the source is never what limits a 100 Mbit/s or 1 Gbit/s link.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import socketserver
import sys
from collections.abc import Sequence
from types import FrameType

_PAYLOAD = memoryview(bytes(range(256)) * 4096)  # 1 MiB


class _Pour(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            while True:
                sock.sendall(_PAYLOAD)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wan.source", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    with _Server((args.host, args.port), _Pour) as server, contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
