"""Prometheus metrics for the route, served on [route] metrics=HOST:PORT.

Gauges and totals are read from the servicer's own state at scrape time, so
the relay's hot path only adds to plain integers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vnet.gcpause import GcCollector

if TYPE_CHECKING:
    from vnet.node.node import Node
    from vnet.route.admin import RouteAdmin
    from vnet.route.peer import Peers
    from vnet.route.service import RouteServicer

log = logging.getLogger(__name__)

SETUP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class RouteCollector:
    """Reads a route's state when Prometheus scrapes."""

    def __init__(self, servicer: RouteServicer, admin: RouteAdmin | None = None) -> None:
        self.servicer = servicer
        self.admin = admin

    def collect(self) -> Iterator[Any]:
        s = self.servicer
        nodes = GaugeMetricFamily("vnet_nodes", "Nodes joined, by group", labels=["group"])
        serves = GaugeMetricFamily(
            "vnet_serves",
            "Serves registered, by group (in a cluster, on every route of the group)",
            labels=["group"],
        )
        free = GaugeMetricFamily(
            "vnet_serveids_free",
            "Serveids not registered, by group: dynamic (1-499, the route assigns them) and "
            "static (500-999); a group holds at most 999 serves",
            labels=["group", "kind"],
        )
        # From the registry's indexes: the cost is the number of groups, not of nodes.
        for group in s.registry.groups():
            nodes.add_metric([group], s.registry.group_size(group))
            serves.add_metric([group], s.registry.serve_total(group))
            dynamic, static = s.registry.free_serveids(group)
            free.add_metric([group, "dynamic"], dynamic)
            free.add_metric([group, "static"], static)
        yield nodes
        yield serves
        yield free
        yield GaugeMetricFamily("vnet_tunnels_open", "Tunnels open now", value=len(s.splices))
        yield CounterMetricFamily("vnet_tunnels", "Tunnels opened", value=s.stats.opened)
        yield GaugeMetricFamily(
            "vnet_tunnel_spares",
            "Spare Accept streams the route holds for the serving nodes' next Dials",
            value=s.spares.held,
        )
        yield CounterMetricFamily(
            "vnet_tunnel_spares_used",
            "Tunnels spliced onto a spare Accept stream, without an open_tunnel round trip",
            value=s.spares.used,
        )
        yield CounterMetricFamily(
            "vnet_tunnel_resets", "Tunnels ended by a reset", value=s.stats.resets
        )
        yield CounterMetricFamily(
            "vnet_tunnel_memory_resets",
            "Tunnels reset because the route held too much of their data in stalled writes",
            value=s.stats.memory_resets,
        )
        yield GaugeMetricFamily(
            "vnet_tunnel_memory_held_bytes",
            "Tunnel data the route holds in writes that wait (vnet/core/budget.py)",
            value=s.budget.held,
        )
        relayed = CounterMetricFamily(
            "vnet_relayed_bytes",
            "Tunnel frame bytes relayed, by direction",
            labels=["direction"],
        )
        relayed.add_metric(["to_serve"], s.stats.bytes_to_serve)
        relayed.add_metric(["to_dialer"], s.stats.bytes_to_dialer)
        yield relayed
        yield CounterMetricFamily(
            "vnet_auth_failures", "Failed authentications", value=s.auth_failures
        )
        rejected = CounterMetricFamily(
            "vnet_rejected_requests", "Refused calls, by status code", labels=["code"]
        )
        for code, count in sorted(s.rejected.items()):
            rejected.add_metric([code], count)
        yield rejected
        probes = CounterMetricFamily(
            "vnet_path_probes",
            "Pings passed on through another node (nodes timing their paths), by outcome",
            labels=["outcome"],
        )
        probes.add_metric(["echoed"], s.between.probes.echoed)
        probes.add_metric(["unanswered"], s.between.probes.unanswered)
        yield probes
        yield from _peer_families(s.peers)
        if self.admin is not None:
            actions = CounterMetricFamily(
                "vnet_admin_actions",
                "Admin actions (API and dashboard), by action and result (ok, failed)",
                labels=["action", "result"],
            )
            for (action, result), count in sorted(self.admin.actions.items()):
                actions.add_metric([action, result], count)
            yield actions
        yield from self._cluster()

    def _cluster(self) -> Iterator[Any]:
        """A clustered route's view of the store (nothing for a lone route)."""
        member = self.servicer.member
        if member is None:
            return
        yield GaugeMetricFamily(
            "vnet_cluster_fenced",
            "1 when this route lost its lease in the cluster store and stopped admitting",
            value=int(member.store.fenced.is_set()),
        )
        yield GaugeMetricFamily(
            "vnet_cluster_mirrored_serves",
            "Serves of nodes on the other routes, as this route knows them",
            value=self.servicer.registry.mirrored_count(),
        )
        yield GaugeMetricFamily(
            "vnet_cluster_routes",
            "Routes in the cluster store, this one included",
            value=len(member.routes),
        )
        yield CounterMetricFamily(
            "vnet_cluster_serve_events",
            "Serve changes of the other routes applied from the store's watch",
            value=member.events,
        )


def _peer_families(peers: Peers) -> Iterator[Any]:
    """Tunnels across routes (vnet.route.peer): both sides, bytes, refusals."""
    tunnels = CounterMetricFamily(
        "vnet_peer_tunnels",
        "Tunnels through another route: dialled from here (out), served here (in)",
        labels=["side"],
    )
    for side in ("out", "in"):
        tunnels.add_metric([side], peers.tunnels[side])
    yield tunnels
    moved = CounterMetricFamily(
        "vnet_peer_bytes",
        "Tunnel frame bytes sent to and received from other routes",
        labels=["direction"],
    )
    for direction in ("sent", "received"):
        moved.add_metric([direction], peers.bytes(direction))
    yield moved
    refused = CounterMetricFamily(
        "vnet_peer_refused",
        "Other routes' tunnel calls this route refused, by reason (unauthenticated, not_here)",
        labels=["reason"],
    )
    for reason, count in sorted(peers.refused.items()):
        refused.add_metric([reason], count)
    yield refused
    answers = CounterMetricFamily(
        "vnet_peer_answers",
        "Other routes' answers to this route's tunnel calls that were not a tunnel: not_here "
        "(looked for elsewhere), timeout, or the status code (UNAVAILABLE: also unreachable)",
        labels=["answer"],
    )
    for answer, count in sorted(peers.answers.items()):
        answers.add_metric([answer], count)
    yield answers


class NodeCollector:
    """Reads a node's uses when Prometheus scrapes."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Any]:
        node = self.node
        yield GaugeMetricFamily(
            "vnet_node_connected", "1 while the node is joined to its route", value=node.connected
        )
        on = GaugeMetricFamily(
            "vnet_node_route",
            "1 for the route the node is joined to now (HOST:PORT, one of [route] routes)",
            labels=["route"],
        )
        if node.connected:
            on.add_metric([node.route_address], 1)
        yield on
        yield CounterMetricFamily(
            "vnet_node_route_moves",
            "Times the node joined another route than the one it lost or left",
            value=node.route_moves,
        )
        spares = node.serve_side.spares
        yield GaugeMetricFamily(
            "vnet_node_spares",
            "Spare Accept streams this node holds open at the route for its serves",
            value=spares.held,
        )
        yield CounterMetricFamily(
            "vnet_node_spares_used", "Tunnels this node accepted on a spare", value=spares.used
        )
        opened = CounterMetricFamily(
            "vnet_use_connections", "Connections accepted by each use", labels=["use"]
        )
        open_now = GaugeMetricFamily(
            "vnet_use_connections_open", "Connections open on each use now", labels=["use"]
        )
        resets = CounterMetricFamily(
            "vnet_use_resets", "Connections of each use ended by a reset", labels=["use"]
        )
        moved = CounterMetricFamily(
            "vnet_use_bytes",
            "Bytes through each use: out (local client to the serve) and in",
            labels=["use", "direction"],
        )
        for key, state in sorted(node.uses.items()):
            c = state.counters
            opened.add_metric([key], c.opened)
            open_now.add_metric([key], c.open)
            resets.add_metric([key], c.resets)
            moved.add_metric([key, "out"], c.bytes_out)
            moved.add_metric([key, "in"], c.bytes_in)
        yield from (opened, open_now, resets, moved)
        yield from self._udp()
        yield CounterMetricFamily(
            "vnet_node_bulk_yields",
            "Reads of bulk tunnels cut to 64 KiB because another tunnel was interactive",
            value=node.pacer.yielded,
        )
        g = node.governor
        if g is None:
            return
        yield GaugeMetricFamily(
            "vnet_node_bulk_governed",
            "1 while the bulk tunnels are paced against the path's queueing delay "
            "(another tunnel is interactive), else 0",
            value=1 if g.pacing else 0,
        )
        yield GaugeMetricFamily(
            "vnet_node_bulk_rate_bytes",
            "Bytes/s the bulk tunnels may send together while governed (0: not governed)",
            value=g.rate if g.pacing else 0,
        )
        yield GaugeMetricFamily(
            "vnet_node_path_rate_bytes",
            "The path's rate as the governor estimates it from the queue's growth "
            "between probes (0: not governed)",
            value=g.capacity if g.pacing else 0,
        )
        yield GaugeMetricFamily(
            "vnet_node_path_queue_delay_seconds",
            "Queueing delay the last probe measured on the path of the busiest bulk tunnel",
            value=g.delay,
        )
        yield GaugeMetricFamily(
            "vnet_node_path_base_rtt_seconds",
            "The lowest probe round trip on that path: the path without queues",
            value=g.base,
        )
        yield CounterMetricFamily(
            "vnet_node_bulk_held_seconds",
            "Seconds of pause the governor asked of bulk tunnels",
            value=g.held_s,
        )
        yield CounterMetricFamily(
            "vnet_node_path_probes", "Probes the governor timed", value=g.probes
        )

    def _udp(self) -> Iterator[Any]:
        """The UDP uses' and serves' flows: kind is "use" or "serve", name its key."""
        labels = ["kind", "name"]
        flows = CounterMetricFamily("vnet_udp_flows", "UDP flows opened", labels=labels)
        flows_open = GaugeMetricFamily("vnet_udp_flows_open", "UDP flows open now", labels=labels)
        datagrams = CounterMetricFamily(
            "vnet_udp_datagrams",
            "UDP datagrams: out (local socket into the tunnel) and in (back out)",
            labels=[*labels, "direction"],
        )
        moved = CounterMetricFamily(
            "vnet_udp_bytes", "UDP payload bytes, by direction", labels=[*labels, "direction"]
        )
        drops = CounterMetricFamily(
            "vnet_udp_drops",
            "UDP datagrams dropped: queue_full, oversize, flow_limit",
            labels=[*labels, "reason"],
        )
        node = self.node
        both = [("use", k, u.udp_counters) for k, u in node.uses.items() if u.config.type == "udp"]
        both += [("serve", k, s.udp) for k, s in node.serves.items() if s.config.type == "udp"]
        for kind, key, c in sorted(both, key=lambda t: (t[0], t[1])):
            flows.add_metric([kind, key], c.flows_opened)
            flows_open.add_metric([kind, key], c.flows_open)
            datagrams.add_metric([kind, key, "out"], c.datagrams_out)
            datagrams.add_metric([kind, key, "in"], c.datagrams_in)
            moved.add_metric([kind, key, "out"], c.bytes_out)
            moved.add_metric([kind, key, "in"], c.bytes_in)
            for reason, count in c.drops.items():
                drops.add_metric([kind, key, reason.value], count)
        yield from (flows, flows_open, datagrams, moved, drops)


def serve_node_metrics(node: Node, host: str, port: int) -> MetricsServer:
    """A node's own endpoint ([vnet] metrics=HOST:PORT)."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(node))
    registry.register(GcCollector())
    server, _ = start_http_server(port, host, registry=registry)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%s/metrics", host, bound)
    return MetricsServer(server, bound)


class MetricsServer:
    """The running HTTP endpoint."""

    def __init__(self, server: Any, port: int) -> None:
        self._server = server
        self.port = port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(
    servicer: RouteServicer, host: str, port: int, admin: RouteAdmin | None = None
) -> MetricsServer:
    """Start the HTTP endpoint in a thread (port 0 picks a free one)."""
    registry = CollectorRegistry()
    registry.register(RouteCollector(servicer, admin))
    registry.register(GcCollector())
    setup = Histogram(
        "vnet_tunnel_setup_seconds",
        "Time from a Dial to its tunnel being spliced",
        buckets=SETUP_BUCKETS,
        registry=registry,
    )
    servicer.observe_setup = setup.observe
    server, _ = start_http_server(port, host, registry=registry)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%s/metrics", host, bound)
    return MetricsServer(server, bound)
