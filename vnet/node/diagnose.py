"""Why a node cannot reach its route, found out and said in vnet's words.

gRPC reports a failed connection in its own terms ("failed to connect to all
addresses", BoringSSL reasons, "Socket closed"), and the node used to learn
it only when its whole connect timeout had run out. When the channel first
fails, the node asks here instead. A plain TCP connect tells a refused port,
an unreachable host and an unknown name apart; an HTTP/2 preface tells a
plaintext route; a TLS handshake with the node's own settings tells a route
without TLS, a certificate from another CA, a certificate for another name
and a missing client certificate apart. Each answer is one line naming the
setting that fixes it.

Only used while a node starts (RouteClient.connect with fail_fast): a node
that lost its route reconnects as before, with its backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vnet.core.config import NodeConfig, RouteEndpoint

if TYPE_CHECKING:
    from vnet.node.client import ClientTls

# What a gRPC server answers an HTTP/2 client preface with: its SETTINGS.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_H2_SETTINGS = 0x04
# Each step of a probe (connect, handshake, first answer) gets at most this.
STEP_TIMEOUT = 1.0
# OpenSSL's verify codes the messages below tell apart.
_NOT_YET_VALID = 9
_EXPIRED = 10
_HOSTNAME_MISMATCH = 62
_IP_MISMATCH = 64
_CHECK_ADDRESS = "check [route] ip and port"


@dataclass(frozen=True)
class Diagnosis:
    """Why the route cannot be reached, as one line."""

    reason: str
    # Could be over in a moment (a route starting, a network coming up):
    # worth one more look before giving up.
    transient: bool = False


# A probe of the route with this node's settings, within a time budget in seconds.
Probe = Callable[[float], Awaitable[Diagnosis | None]]


def probe_for(
    config: NodeConfig, tls: ClientTls | None, target: RouteEndpoint | None = None
) -> Probe:
    """The probe for a node with this config, connecting with `tls` (None:
    plaintext) to target (one of config.targets; None: config.route)."""

    async def probe(budget: float) -> Diagnosis | None:
        try:
            async with asyncio.timeout(budget):
                found = await diagnose(config, tls, target)
        except (TimeoutError, OSError, ValueError):
            # Found nothing certain: the caller says what gRPC saw instead.
            return None
        if found is not None and config.routes:
            # The address is an entry of routes=, not ip and port.
            reason = found.reason.replace(_CHECK_ADDRESS, "check [route] routes")
            return dataclasses.replace(found, reason=reason)
        return found

    return probe


async def diagnose(
    config: NodeConfig, tls: ClientTls | None, target: RouteEndpoint | None = None
) -> Diagnosis | None:
    """What is wrong with reaching the route, or None when nothing was found.

    config gives the address and the names to put in messages; tls is what
    the node's channel uses (None: plaintext).
    """
    target = target or config.route
    host, port = target.ip, target.port
    key = "routes" if config.routes else "ip"
    try:
        loop = asyncio.get_running_loop()
        await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Diagnosis(f"cannot resolve {host}: {exc.strerror} (check [route] {key})", True)
    plain = await _speaks_plain_h2(host, port)
    if isinstance(plain, Diagnosis):
        return plain
    if tls is None:
        if plain:
            return None
        if await _speaks_tls(host, port):
            return Diagnosis(
                "the route uses TLS: set [vnet] tls=true (and tls_ca= its CA certificate, "
                "unless this system trusts its CA)"
            )
        return Diagnosis(
            f"it does not answer as a vnet route (is something else there? {_CHECK_ADDRESS})"
        )
    if plain:
        return Diagnosis(
            "the route does not use TLS: set [vnet] tls=false, or give the route "
            "tls_cert and tls_key"
        )
    return await _tls_problem(config, tls, target)


async def _connect(
    host: str, port: int, tls: ssl.SSLContext | None = None, server_name: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(STEP_TIMEOUT):
        return await asyncio.open_connection(host, port, ssl=tls, server_hostname=server_name)


async def _first_frame(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
    """Send an HTTP/2 client preface; the first 9 bytes answered, fewer if the
    peer closed first, None if it said nothing in time."""
    writer.write(_H2_PREFACE)
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            await writer.drain()
            return await reader.readexactly(9)
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except ConnectionError:
        return b""
    except TimeoutError:
        return None


async def _close(writer: asyncio.StreamWriter) -> None:
    # Abort, not close: a TLS close waits for the peer's close_notify, which
    # gRPC servers send late or never.
    writer.transport.abort()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(STEP_TIMEOUT):
            await writer.wait_closed()


async def _speaks_plain_h2(host: str, port: int) -> bool | Diagnosis:
    """Whether a plaintext HTTP/2 server answers there; Diagnosis if nothing listens."""
    try:
        reader, writer = await _connect(host, port)
    except ConnectionRefusedError:
        return Diagnosis(
            f"connection refused (is vnet-route running there? {_CHECK_ADDRESS})", True
        )
    except TimeoutError:
        return Diagnosis(
            f"no answer within {STEP_TIMEOUT:.0f}s (a firewall dropping packets? {_CHECK_ADDRESS})",
            True,
        )
    except OSError as exc:
        what = (exc.strerror or str(exc)).lower()
        return Diagnosis(f"{what} ({_CHECK_ADDRESS})", True)
    try:
        frame = await _first_frame(reader, writer)
    finally:
        await _close(writer)
    return frame is not None and len(frame) == 9 and frame[3] == _H2_SETTINGS


async def _speaks_tls(host: str, port: int) -> bool:
    """Whether a TLS handshake succeeds there, trusting anything."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await _connect(host, port, context)
    except (OSError, TimeoutError):
        return False
    await _close(writer)
    return True


def _names(cert: dict[str, object]) -> list[str]:
    """The names a certificate is for: its subjectAltNames, else its commonName."""
    alt = cert.get("subjectAltName", ())
    names = [str(v) for k, v in alt if k in ("DNS", "IP Address")] if isinstance(alt, tuple) else []
    if not names:
        for rdn in cert.get("subject", ()):  # type: ignore[attr-defined]
            names += [str(v) for k, v in rdn if k == "commonName"]
    return names


def _context(tls: ClientTls, check_hostname: bool) -> ssl.SSLContext:
    ca = tls.root_ca.decode("ascii", "replace") if tls.root_ca else None
    context = ssl.create_default_context(cadata=ca)
    context.check_hostname = check_hostname
    context.set_alpn_protocols(["h2"])
    return context


@contextlib.contextmanager
def _with_client_cert(context: ssl.SSLContext, tls: ClientTls) -> Iterator[None]:
    """Present the node's client certificate, from the bytes the channel uses.

    ssl loads certificates from files only: a private directory, removed at once.
    """
    if not (tls.cert_chain and tls.private_key):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="vnet-probe-") as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_bytes(tls.cert_chain)
        key.touch(mode=0o600)
        key.write_bytes(tls.private_key)
        with contextlib.suppress(ssl.SSLError, OSError):
            # A bad pair is reported before connecting (check_key_pair).
            context.load_cert_chain(cert, key, password=lambda: b"")
        yield


async def _tls_problem(
    config: NodeConfig, tls: ClientTls, target: RouteEndpoint
) -> Diagnosis | None:
    v = config.vnet
    host, port = target.ip, target.port
    expected = tls.server_name or host
    # The CA first, the name on its own after: to say which names would do.
    try:
        _, writer = await _connect(host, port, _context(tls, False), expected)
    except ssl.SSLCertVerificationError as exc:
        return Diagnosis(_untrusted(exc.verify_code, tls.root_ca is not None, v.tls_ca))
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return Diagnosis(
            f"the route does not complete a TLS handshake (is it a vnet route? {_CHECK_ADDRESS})"
        )
    names = _names(writer.get_extra_info("peercert") or {})
    await _close(writer)
    try:
        _, writer = await _connect(host, port, _context(tls, True), expected)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in (_HOSTNAME_MISMATCH, _IP_MISMATCH) and names:
            return _mismatch(names, expected, bool(tls.server_name))
        return Diagnosis(_untrusted(exc.verify_code, tls.root_ca is not None, v.tls_ca))
    except (ssl.SSLError, OSError, TimeoutError):
        return None
    await _close(writer)
    # Trusted and for the right name: does the route take this node's
    # certificate (or lack of one)? TLS 1.3 refuses it after the handshake:
    # the route closes as soon as it was sent.
    context = _context(tls, True)
    with _with_client_cert(context, tls):
        try:
            reader, writer = await _connect(host, port, context, expected)
        except (ssl.SSLError, OSError, TimeoutError):
            return None
    try:
        frame = await _first_frame(reader, writer)
    except ssl.SSLError:
        frame = b""
    finally:
        await _close(writer)
    if frame is None or frame:
        return None
    return _refused_client_cert(tls, v.tls_cert)


def _untrusted(code: int, own_ca: bool, tls_ca: str) -> str:
    if code == _EXPIRED:
        return "the route's certificate has expired (renew its [route] tls_cert)"
    if code == _NOT_YET_VALID:
        return "the route's certificate is not valid yet (check the clocks, or its tls_cert)"
    if own_ca:
        named = f" ({tls_ca})" if tls_ca else ""
        return (
            f"the route's certificate is not signed by the CA in [vnet] tls_ca{named}: "
            "set tls_ca to the CA certificate that issued it"
        )
    return (
        "the route's certificate is not signed by a CA this system trusts: "
        "set [vnet] tls_ca to the CA certificate that issued it"
    )


def _mismatch(names: list[str], expected: str, explicit: bool) -> Diagnosis:
    usable = [n for n in names if not n.startswith("*.")]
    fix = (
        f"set [vnet] tls_server_name={usable[0]}"
        if usable
        else f"set [vnet] tls_server_name to a name matching {names[0]}"
    )
    given = " ([vnet] tls_server_name)" if explicit else ""
    return Diagnosis(
        f"the route's certificate is for {', '.join(names)}, not {expected}{given}: {fix}"
    )


def _refused_client_cert(tls: ClientTls, tls_cert: str) -> Diagnosis:
    if not tls.cert_chain:
        return Diagnosis(
            "the route closed the connection after the TLS handshake: it requires a client "
            "certificate; set [vnet] tls_cert and tls_key (signed by the route's tls_client_ca)"
        )
    named = f" {tls_cert}" if tls_cert else ""
    return Diagnosis(
        "the route closed the connection after the TLS handshake: it refused this node's "
        f"certificate ([vnet] tls_cert{named}); it must be signed by the route's tls_client_ca"
    )
