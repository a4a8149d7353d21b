"""Link profiles and run sizes of the WAN benchmark (pure data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.wan.wire import Link


@dataclass(frozen=True)
class Profile:
    name: str
    rtt_ms: float  # office <-> home, for every path
    rate_mbit: float  # each access link, each direction
    buffer_ms: float  # drop-tail buffer of each link direction, as time at the rate
    loss_pct: float = 0.0  # random loss office -> home and home -> office, end to end
    # "full": every row; "throughput": the one-connection bulk rows (and a ping check).
    rows: str = "full"

    def link(self) -> Link:
        """One access link. Office to home crosses two (office's and home's), each way, so
        each carries a quarter of the RTT each way and the full rate: a round trip is
        4 x RTT/4, and either link can be the bottleneck, as real access links are."""
        rate = self.rate_mbit * 1e6
        return Link(
            rate_bps=rate,
            buffer_bytes=max(3028, int(rate / 8 * self.buffer_ms / 1000)),
            delay_us=round(self.rtt_ms * 1000 / 4),
            # A frame crosses two links each way: 1 - (1 - p)^2 = loss_pct end to end.
            loss_ppm=round((1 - (1 - self.loss_pct / 100) ** 0.5) * 1e6),
        )

    @property
    def link_mbytes(self) -> float:
        """The link's rate in MB/s of frames (10^6 bytes)."""
        return self.rate_mbit / 8

    def describe(self) -> str:
        loss = f", {self.loss_pct:g}% loss" if self.loss_pct else ", no loss"
        return (
            f"{self.rtt_ms:g} ms RTT, {self.rate_mbit:g} Mbit/s, "
            f"{self.buffer_ms:g} ms of drop-tail buffer{loss}"
        )

    def per_link(self) -> str:
        link = self.link()
        return (
            f"each access link: {link.delay_us / 1000:g} ms one way, {self.rate_mbit:g} Mbit/s, "
            f"{link.buffer_bytes:,} B buffer, {link.loss_ppm / 1e4:.3g}% loss, per direction"
        )


PROFILES = {
    "A": Profile("A", 50, 100, 50),
    "B": Profile("B", 50, 100, 50, loss_pct=1.0),
    "C": Profile("C", 100, 1000, 100, rows="throughput"),
}


@dataclass(frozen=True)
class Sizes:
    bulk_mib: int
    bulk_mib_fast: int  # for throughput-only profiles (1 Gbit/s)
    pings: int
    first_bytes: int
    before_s: float
    load_s: float
    settle_s: float
    after_max_s: float


FULL = Sizes(64, 256, 200, 30, 2.0, 20.0, 4.0, 20.0)
QUICK = Sizes(16, 64, 40, 10, 1.0, 8.0, 3.0, 10.0)
