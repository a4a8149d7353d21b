"""The pacer: bulk tunnels read less while another tunnel of the node is interactive."""

from __future__ import annotations

from vnet.pacing import BULK_READ, HOLD_S, SHARED_READ, Lane, Pacer


def test_a_tunnel_alone_reads_in_bulk_whatever_its_reads_look_like() -> None:
    pacer, lane = Pacer(), Lane()
    for t in range(5):
        assert pacer.read_size(lane, t * 0.01) == BULK_READ
        pacer.note(lane, 1, t * 0.01)
    assert pacer.read_size(lane, 0.05) == BULK_READ


def test_bulk_yields_while_another_tunnel_is_interactive_and_recovers_after() -> None:
    pacer, bulk, ping = Pacer(), Lane(), Lane()
    pacer.note(bulk, BULK_READ, 0.0)
    pacer.note(ping, 1, 0.0)  # a first read: a request line, not yet interactive
    assert pacer.read_size(bulk, 0.001) == BULK_READ
    pacer.note(ping, 1, 0.002)
    assert pacer.sharing(0.002)
    assert pacer.read_size(bulk, 0.003) == SHARED_READ
    # The interactive tunnel itself is never held back.
    assert pacer.read_size(ping, 0.003) == BULK_READ
    assert pacer.read_size(bulk, 0.002 + HOLD_S - 0.001) == SHARED_READ
    assert pacer.read_size(bulk, 0.002 + HOLD_S + 0.001) == BULK_READ
    assert not pacer.sharing(0.002 + HOLD_S + 0.001)


def test_large_reads_are_not_interactive() -> None:
    pacer, a, b = Pacer(), Lane(), Lane()
    for t in range(3):
        pacer.note(a, SHARED_READ, t * 0.001)
    assert pacer.read_size(b, 0.003) == BULK_READ
