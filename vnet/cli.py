"""Entry points: `vnet-route [CONFIG]` and `vnet [CONFIG]`.

The only place that configures logging, picks the event loop and turns
errors into exit codes. User mistakes end in one line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from vnet import __version__, gcpause
from vnet.config_load import DEFAULTS, Loaded, load_node, load_route
from vnet.core.config import NodeConfig, RouteSettings
from vnet.core.errors import RouteUnavailable, VnetError
from vnet.core.registry import DYNAMIC_RANGE, SERVEIDS_PER_GROUP

if TYPE_CHECKING:
    from vnet.node.client import NodeCredentials
    from vnet.node.node import Node
    from vnet.route.security import RouteSecurity

log = logging.getLogger("vnet")

DEFAULT_CONFIG = "config.ini"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Tunnel lines carry these as fields too (see vnet.node.tunnel).
        for key in ("vnetid", "serveid", "tunnel"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _setup_logging(level: str, form: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where there is one: it measurably speeds up the relay."""
    # Imported here, not at the top: it loads grpc, which reads GRPC_VERBOSITY
    # once, and node_main sets that first.
    from vnet.node import tunnel

    tunnel.raise_fd_limit()
    gcpause.watch()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: int = uvloop.run(main)
    return result


async def _until_signalled(work: Coroutine[Any, Any, None]) -> str:
    """Run work until it ends or SIGINT/SIGTERM arrives; say which."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Windows' event loops have no signal handlers: Ctrl-C ends the
        # program by KeyboardInterrupt there instead.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # Started, and a SIGTERM from now on is a clean stop: only now the collection, which
    # takes a few milliseconds (tens on a busy machine) and would otherwise widen the window
    # in which the default handler kills the process.
    gcpause.settle()
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        return "ended"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return "signalled"


def _parser(prog: str, what: str, log_default: str = "info") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=what)
    parser.add_argument(
        "config",
        nargs="?",
        help=f"config file (default: ./{DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help=f"how much to log (default: {log_default})",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text for people, json (one object per line) for log shippers (default: text)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the config file and the files it names as the start would, print every "
        "problem and warning, start nothing; exit 0 if it would start",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _report(prog: str, loaded: Loaded[Any], check: bool) -> None:
    """Every problem, one line each: file, line, section, key and reason."""
    for problem in loaded.errors:
        print(f"{prog}: {problem}", file=sys.stderr)
    for warning in loaded.warnings:
        if check:
            print(f"{prog}: warning: {warning}", file=sys.stderr)
        else:
            log.warning("%s", warning)
    if check and loaded.errors:
        print(f"{prog}: {loaded.path}: {len(loaded.errors)} problem(s)", file=sys.stderr)


# The serveid space, as --check states it (vnet.core.registry).
SERVEID_SPACE = (
    f"a group holds at most {SERVEIDS_PER_GROUP} serves, {len(DYNAMIC_RANGE)} of them "
    f"assigned by the route (serveids 1-{len(DYNAMIC_RANGE)})"
)


def _check(prog: str, loaded: Loaded[Any], limits: str = "") -> int:
    """--check: what the start would say, without starting; exit 0 if it would start.
    limits: a line on the limits that apply, printed after the verdict."""
    _report(prog, loaded, check=True)
    if loaded.errors:
        return EXIT_ERROR
    if loaded.path == DEFAULTS:
        print(f"{prog}: no {DEFAULT_CONFIG}; the route would run on its defaults (127.0.0.1:7749)")
    else:
        print(f"{prog}: {loaded.path}: ok")
    if limits:
        print(f"{prog}: {limits}")
    return EXIT_OK


# --- route -------------------------------------------------------------------


def route_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["admin"]:
        return _admin(argv[1:])
    args = _parser(
        "vnet-route",
        "Run the vnet route: the public relay that vnet nodes connect to. "
        "With no config file and no ./config.ini it listens on 127.0.0.1:7749. "
        "`vnet-route admin --help`: the admin commands (nodes, kick, drain, reload, ...). "
        "SIGHUP reloads credentials and limits from the config file.",
    ).parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    path = args.config or DEFAULT_CONFIG
    # The same validation for --check and the start: what passes one passes the other.
    loaded = load_route(path, explicit=args.config is not None)
    if args.check:
        limits = ""
        if loaded.value is not None:
            caps = loaded.value[0].limits
            limits = (
                f"limits: {caps.max_nodes} nodes, {caps.max_serves_per_node} serves a node; "
                f"{SERVEID_SPACE}"
            )
        return _check("vnet-route", loaded, limits)
    _report("vnet-route", loaded, check=False)
    if loaded.value is None:
        return EXIT_ERROR
    settings, security = loaded.value

    def reload() -> tuple[RouteSettings, RouteSecurity] | list[str]:
        # The same loading as the start: a file it would refuse changes nothing.
        again = load_route(path, explicit=True)
        if again.value is None:
            return [str(e) for e in again.errors]
        return again.value

    return _run(_route(settings, security, None if loaded.path == DEFAULTS else reload))


def _admin(argv: Sequence[str]) -> int:
    from vnet.route.admin_client import run

    _setup_logging("warning")
    return asyncio.run(run(argv))


async def _route(
    settings: RouteSettings,
    security: RouteSecurity,
    reloader: Callable[[], tuple[RouteSettings, RouteSecurity] | list[str]] | None = None,
) -> int:
    from vnet.route.server import RouteTimeouts, start_route

    try:
        route = await start_route(
            settings.listen,
            RouteTimeouts(keepalive=settings.keepalive, keepalive_timeout=settings.keepalive),
            security=security,
            limits=settings.limits,
            metrics=settings.metrics,
            settings=settings,
            reloader=reloader,
            web=settings.admin.web,
        )
    except OSError as exc:
        print(f"vnet-route: {exc}", file=sys.stderr)
        return EXIT_ERROR
    reloads: set[asyncio.Task[None]] = set()

    async def reload_on_signal() -> None:
        with contextlib.suppress(VnetError):  # logged and audited by the reload itself
            await route.admin.reload("SIGHUP")

    def hangup() -> None:
        task = asyncio.ensure_future(reload_on_signal())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup)

    async def serve() -> None:
        # Not server.wait_for_termination(): cancelling that breaks a later
        # server.stop() (it shares the shutdown future).
        await asyncio.Event().wait()

    try:
        await _until_signalled(serve())
    finally:
        log.info("route stopping")
        await route.stop()
    return EXIT_OK


# --- node --------------------------------------------------------------------


def node_main(argv: Sequence[str] | None = None) -> int:
    parser = _parser(
        "vnet",
        "Run a vnet node: register local services at the route and map the "
        "group's services to local ports. With [vnet] terminal=true and a "
        "terminal, it opens the console.",
        log_default="info; warning with -c",
    )
    parser.add_argument(
        "-c",
        dest="commands",
        action="append",
        metavar="COMMAND",
        help="run a console command (repeatable) and exit: 0 when all succeed, 1 when one "
        "fails or the route cannot be reached, 2 when one is not a valid command; "
        "nothing in the file is started",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for a route that does not answer at start (default: 10); "
        "a refused port or a TLS mistake ends it at once, with the reason (with several "
        "[route] routes: each in turn, then the next is tried)",
    )
    # Scripts want their output, not our progress: -c logs warnings only, unless asked.
    parser.set_defaults(log_level=None)
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be more than 0")
    _setup_logging(args.log_level or ("warning" if args.commands else "info"), args.log_format)
    path = args.config or DEFAULT_CONFIG
    # gRPC's C core prints its own lines (BoringSSL reasons for each failed
    # handshake) unless told not to; the node says what went wrong itself.
    # Read once, when grpc is first imported (load_node imports the client).
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    loaded = load_node(path)
    if args.check:
        serves = len(loaded.value[0].serves) if loaded.value is not None else 0
        limits = f"{serves} serve(s); {SERVEID_SPACE}" if serves else ""
        return _check("vnet", loaded, limits)
    _report("vnet", loaded, check=False)
    if loaded.value is None:
        return EXIT_ERROR
    config, credentials = loaded.value
    return _run(_node(config, credentials, args.commands or [], args.timeout))


async def _node(
    config: NodeConfig,
    credentials: NodeCredentials,
    commands: Sequence[str] = (),
    timeout: float = 10.0,
) -> int:
    from vnet.node.node import Node, NodeTimeouts, run_node

    keepalive = config.vnet.keepalive
    timeouts = NodeTimeouts(connect=timeout, keepalive=keepalive, keepalive_timeout=keepalive)
    node = Node(config, timeouts, credentials=credentials)
    if config.vnet.metrics and not commands:
        from vnet.metrics import serve_node_metrics

        host, _, port = config.vnet.metrics.rpartition(":")
        try:
            serve_node_metrics(node, host.strip("[]"), int(port))
        except OSError as exc:
            print(
                f"vnet: {config.path}: [vnet] metrics: cannot listen on "
                f"{config.vnet.metrics}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return EXIT_ERROR
    if commands:
        return await _script(node, commands)
    console = config.vnet.terminal and sys.stdin.isatty() and sys.stdout.isatty()
    if config.vnet.terminal and not console:
        log.warning("terminal=true, but this is not a terminal: running without the console")
    if console:
        # Imported before _until_signalled settles, so prompt_toolkit's objects are frozen
        # with the rest.
        import vnet.console.prompt  # noqa: F401
    try:
        how = await _until_signalled(_console(node) if console else run_node(node))
    except RouteUnavailable as exc:
        print(f"vnet: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except VnetError as exc:
        # Refused by the route (credentials, limits): its reason, in one line.
        print(f"vnet: the route at {node.route_address} refused this node: {exc}", file=sys.stderr)
        return EXIT_ERROR
    log.info("node stopped (%s)", how)
    return EXIT_OK


async def _console(node: Node) -> None:
    """Start the node, then the console on the same loop, until exit."""
    from vnet.console.prompt import run_console

    try:
        await node.start()
        await run_console(node)
    finally:
        await node.stop()


async def _script(node: Node, commands: Sequence[str]) -> int:
    """`vnet CONFIG -c COMMAND ...`: output on stdout, one line per error on stderr."""
    from vnet.console.executor import run_script

    codes: list[int] = []

    async def script() -> None:
        codes.append(
            await run_script(
                node,
                commands,
                out=lambda line: print(line, flush=True),
                err=lambda line: print(line, file=sys.stderr, flush=True),
            )
        )

    await _until_signalled(script())
    return codes[0] if codes else EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vnet [CONFIG]` runs a node; `python -m vnet route [CONFIG]` the route."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["route"]:
        return route_main(argv[1:])
    return node_main(argv)
