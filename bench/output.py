"""What a run prints and writes: the tables, the targets, the chart and the Markdown block."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import chart, report, targets
from bench.idle import IdleResult
from bench.paths import Started

REPO = Path(__file__).resolve().parent.parent
Table = tuple[list[str], list[list[str]]]


@dataclass
class Run:
    args: argparse.Namespace
    argv: list[str]
    load: tuple[float, float, float]
    took: float
    concurrency: Sequence[int]
    started: Started
    results: report.Results
    idle: IdleResult | None
    iso: Table | None
    # More vnet-only tables (bursts, stalled readers): (title, table), in order.
    sections: list[tuple[str, Table]] = field(default_factory=list)


def _settings(
    args: argparse.Namespace,
    concurrency: Sequence[int],
    describe: list[tuple[str, str]],
    load: tuple[float, float, float],
    names: Sequence[str],
) -> list[tuple[str, str]]:
    return [
        # Anything else running skews a 2-core box badly; this at least shows it was there.
        ("load average before the run", " / ".join(f"{x:.2f}" for x in load)),
        ("bulk", f"{args.bulk_mib} MiB, client -> sink, one connection, 4 MiB sendall()"),
        ("ping-pong", f"{args.pings} round trips of 1 byte on one connection (after 50 warm-up)"),
        ("connections", "connect, 1 byte each way, half-close, wait for the far close"),
        ("serial / parallel", f"{args.conns} / {args.parallel_conns} ({args.parallel} threads)"),
        (
            "concurrent bulk",
            f"{args.bulk_mib} MiB split over {' / '.join(map(str, concurrency))} connections "
            "sending at once; total MB/s until the last ack",
        ),
        (
            "ping under bulk",
            f"{args.loaded_pings} round trips while another connection of the same path "
            "streams to the sink",
        ),
        (
            "idle tunnels",
            "skipped (--no-idle)"
            if args.no_idle
            else "skipped (vnet path not selected)"
            if "vnet" not in names
            else f"{' / '.join(f'{n:,}' for n in args.idle_tunnels)} through vnet's echo port",
        ),
        ("repetitions", f"{args.repeat}, paths alternating, rotating who goes first"),
        ("client", "blocking sockets in the bench process, TCP_NODELAY"),
        ("vnet revision", report.revision(REPO)),
        *describe,
    ]


def finish(
    run: Run, metrics: list[report.Metric], cpu: Table, cpu_conns: Table, cpu_ping: Table
) -> None:
    args, started, results = run.args, run.started, run.results
    iso, idle_table = run.iso, run.idle
    names = list(started.paths)
    medians = report.rows(metrics, names, results)
    spreads = report.rows(metrics, names, results, spread=True)
    print(report.plain_table(*medians))
    print()
    print("CPU during the bulk transfer, % of one core (median):")
    print(report.plain_table(*cpu))
    print()
    print(f"CPU during the {args.parallel} parallel connections, % of one core (median):")
    print(report.plain_table(*cpu_conns))
    print()
    print("CPU per 1-byte ping-pong round trip, us (median):")
    print(report.plain_table(*cpu_ping))
    if iso is not None:
        print()
        print("vnet with one tunnel's reader stalled (its echoes piling up):")
        print(report.plain_table(*iso))
    for title, table in run.sections:
        print()
        print(f"{title}:")
        print(report.plain_table(*table))
    idle_block = ""
    if idle_table is not None:
        print()
        print("vnet memory per idle tunnel (growth of VmRSS over the run's start / tunnels open):")
        print(report.plain_table(*idle_table.table()))
        idle_block = (
            "\nvnet memory per idle tunnel (bench/idle.py, measured first on fresh processes: "
            "growth of VmRSS / tunnels open, each tunnel having echoed one byte):\n\n"
            + report.markdown_table(*idle_table.table())
            + "\n"
        )
    goals = targets.rows(results, idle_table, args.idle_tunnels, args.bulk_mib)
    print()
    print("targets (vnet, and vnet-tls, against the ssh chain):")
    print(report.plain_table(*goals))
    chart_note = []
    if args.chart:
        title = f"python -m bench, {report.revision(REPO)}, {os.cpu_count()} cores"
        chart_note.append(chart.draw(Path(args.chart), results, names, run.concurrency, title))
    notes = [
        *started.notes,
        *(idle_table.notes if idle_table is not None else []),
        *chart_note,
        "MB/s is 10^6 bytes per second. vnet/x is vnet's median divided by x's (vnet-tls/ssh "
        "likewise, for vnet over TLS): below 1 on throughput and rates, above 1 on latencies, "
        "means vnet is slower.",
        f"The run took {run.took:.0f} s.",
    ]
    for note in notes:
        print(note)
    if args.markdown:
        command = shlex.join(["python", "-m", "bench", *run.argv])
        block = report.markdown_block(
            command,
            _settings(args, run.concurrency, started.describe, run.load, names),
            medians,
            spreads,
            cpu,
            notes,
        )
        conns_block = (
            f"\nCPU used by each process while opening connections {args.parallel} in parallel "
            "(median, % of one core):\n\n" + report.markdown_table(*cpu_conns) + "\n"
        )
        ping_block = (
            "\nCPU used by each process per 1-byte ping-pong round trip (median, microseconds; "
            "the hops of a round trip run one after another, so their sum is about the round "
            "trip's time):\n\n" + report.markdown_table(*cpu_ping) + "\n"
        )
        block = block.replace(report.END, conns_block + ping_block + report.END)
        if iso is not None:
            extra = (
                "\nvnet with one tunnel's reader stalled (bench/isolation.py: 256 MiB pushed "
                "to the echo service, its echoes never read), each figure measured unloaded "
                "and then during the stall:\n\n" + report.markdown_table(*iso) + "\n"
            )
            block = block.replace(report.END, extra + report.END)
        for title, table in run.sections:
            extra = f"\n{title}:\n\n" + report.markdown_table(*table) + "\n"
            block = block.replace(report.END, extra + report.END)
        block = block.replace(
            report.END,
            idle_block
            + "\ntargets, vnet and vnet-tls against the ssh chain (medians above):\n\n"
            + report.markdown_table(*goals)
            + "\n"
            + report.END,
        )
        did = report.write_markdown(Path(args.markdown), block)
        print(f"{did} {args.markdown}", file=sys.stderr)
