"""The real-programs bench's own logic (bench/realprog.py): what it skips and why, its
A/B variants, and its verdicts. No timing: the figures fed to the table are made up."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import realprog

REPO = Path(__file__).resolve().parent.parent


def test_a_missing_program_skips_its_rows_naming_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PATH holding only a stand-in iperf3: redis and nginx's rows go, naming packages.
    fake = tmp_path / "iperf3"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    keep, notes = realprog.available()
    assert [w.key for w in keep] == ["iperf1", "iperf8"]
    assert len(notes) == 4
    assert any("redis-server" in n and "apt-get install redis-server" in n for n in notes)
    assert any("nginx" in n and "apt-get install nginx" in n for n in notes)


def test_a_missing_client_names_its_own_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for server in ("redis-server", "nginx"):
        fake = tmp_path / server
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    _, notes = realprog.available()
    assert any("redis-benchmark" in n and "apt-get install redis-tools" in n for n in notes)
    assert any("`ab`" in n and "apt-get install apache2-utils" in n for n in notes)
    assert any("`wrk`" in n and "apt-get install wrk" in n for n in notes)


def test_variants_parse_and_bad_ones_are_refused(tmp_path: Path) -> None:
    v = realprog.parse_variant(f"b=src={REPO},vnet.queue_target_ms=0,route.max_nodes=5")
    assert v == realprog.Variant("b", REPO, (("queue_target_ms", "0"),), (("max_nodes", "5"),))
    for bad in ("vnet=vnet.x=1", "B=vnet.x=1", "b", "b=color=red", f"b=src={tmp_path}"):
        with pytest.raises(ValueError, match="b|vnet"):
            realprog.parse_variant(bad)


def test_the_table_marks_each_goal_met_or_not_against_ssh() -> None:
    by_key = {w.key: w for w in realprog.WORKLOADS}
    outcome = realprog.Outcome(
        results={
            "redis": {"direct": [100.0], "ssh": [50.0, 40.0, 60.0], "vnet": [49.0]},
            "ab": {"direct": [100.0], "ssh": [10.0], "vnet": [30.0]},
        },
        workloads=[by_key["redis"], by_key["ab"]],
        paths=["direct", "ssh", "vnet"],
        notes=[],
    )
    header, body = realprog.table(outcome)
    assert header[-1] == "vnet goal"
    redis, ab = body
    assert redis[1:4] == ["100", "50", "49"]
    assert redis[4:6] == ["0.98x", "0.49x"]
    assert redis[-1] == "not met"
    assert ab[-2:] == [">= 3x", "met"]
