"""The wheel, installed into a fresh venv, runs without the source tree.

Builds a wheel from a copy of the sources, installs it (dependencies from
PyPI) into a new venv in a temporary folder, and runs the installed commands
from outside the repository, so nothing can come from the work tree.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import zipfile
from pathlib import Path

import pytest

from harness.procs import spawn
from tests.conftest import free_port
from vnet import __version__

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
# What the build needs: pyproject.toml's packages and readme.
SOURCES = ("pyproject.toml", "README.md", "vnet", "generated")
BUILD_TIMEOUT = 60.0
README = ROOT / "README.md"
# How README.md says to build a wheel, after `python3`.
WHEEL_COMMAND = ("-m", "pip", "wheel", "--no-deps", "-w", "dist")
# Where README.md installs vnet for the systemd units.
SERVICE_VENV = "/opt/vnet"
UNITS = ROOT / "examples" / "systemd"
# Dependencies come from PyPI (or pip's cache): bounded, for a slow registry.
INSTALL_TIMEOUT = 90.0
# What pip says when it cannot reach the index, as opposed to a broken wheel.
OFFLINE = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|Network is unreachable|Max retries exceeded"
    r"|Read timed out|No matching distribution found|Could not find a version that satisfies",
)


async def run(
    *args: str | Path, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str] | None:
    """(exit status, stdout and stderr), or None if it did not finish in time."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, args),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def outside_env() -> dict[str, str]:
    """The environment, minus what could make Python find the work tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


async def build_wheel(tmp: Path) -> Path:
    # From a copy, so the build writes no build/ or *.egg-info into the work tree.
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    # The command README.md gives (pip alone: nothing else to install), run
    # in the copy, plus bounds for a slow registry.
    assert f"python3 {' '.join(WHEEL_COMMAND)} ." in README.read_text()
    args = (*WHEEL_COMMAND, "--timeout", "15", "--retries", "1", ".")
    result = await run(sys.executable, *args, cwd=src, timeout=BUILD_TIMEOUT)
    out = src / "dist"
    if result is None:
        pytest.skip(f"building the wheel took over {BUILD_TIMEOUT:.0f} s: PyPI unreachable?")
    rc, output = result
    if rc != 0 and OFFLINE.search(output):
        # The isolated build fetches setuptools (pyproject.toml's build-system).
        pytest.skip(f"building the wheel cannot reach PyPI for setuptools:\n{output[-2000:]}")
    assert rc == 0, output
    wheels = list(out.glob("vnet-*.whl"))
    assert len(wheels) == 1, output
    return wheels[0]


async def test_wheel_installs_and_runs_outside_the_repo(tmp_path: Path) -> None:
    wheel = await build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"vnet/cli.py", "vnet/py.typed", "vnetrpc/v1/route_pb2.py"} <= names
    # The dashboard's assets, and the admin service.
    assert {"vnet/route/static/index.html", "vnet/route/static/app.js"} <= names
    assert "vnetrpc/v1/admin_pb2.py" in names
    assert not any(n.startswith(("tests/", "bench/", "generated/")) for n in names)

    venv = tmp_path / "venv"
    result = await run(
        sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path, timeout=30
    )
    assert result is not None
    assert result[0] == 0, result[1]
    # This venv's pip installs into the new one: no ensurepip, which is slow.
    result = await run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin" / "python",
        "install",
        "--disable-pip-version-check",
        "--timeout",
        "15",
        "--retries",
        "1",
        wheel,
        cwd=tmp_path,
        timeout=INSTALL_TIMEOUT,
        env=outside_env(),
    )
    if result is None:
        pytest.skip(f"installing the wheel took over {INSTALL_TIMEOUT:.0f} s: PyPI unreachable?")
    rc, output = result
    if rc != 0 and OFFLINE.search(output):
        pytest.skip(f"installing the wheel's dependencies cannot reach PyPI:\n{output[-2000:]}")
    assert rc == 0, output

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = outside_env()
    bin_dir = venv / "bin"
    result = await run(
        bin_dir / "python",
        "-c",
        "import vnet, vnetrpc.v1.route_pb2 as pb; print(vnet.__file__); print(pb.__file__)",
        cwd=outside,
        timeout=30,
        env=env,
    )
    assert result is not None
    assert result[0] == 0, result[1]
    for line in result[1].splitlines():
        assert Path(line).is_relative_to(venv), f"imported from outside the new venv: {line}"
    for program in ("vnet", "vnet-route"):
        result = await run(bin_dir / program, "--version", cwd=outside, timeout=30, env=env)
        assert result == (0, f"{program} {__version__}\n")

    port = free_port()
    (outside / "route.ini").write_text(f"[route]\nip=127.0.0.1\nport={port}\n")
    route = spawn(
        "vnet-route",
        [str(bin_dir / "vnet-route"), "route.ini"],
        outside / "route.log",
        outside,
        env,
    )
    try:
        await route.wait_for_line(f"route listening on 127.0.0.1:{port}")
    finally:
        rc = await route.stop(signal.SIGTERM)
    assert rc == 0, route.output()
    assert "Traceback" not in route.output()


def _exec_starts() -> dict[str, str]:
    found = {}
    for unit in sorted(UNITS.glob("*.service")):
        (line,) = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
        found[unit.name] = line.removeprefix("ExecStart=").split()[0]
    return found


def test_the_units_run_what_the_readme_installs() -> None:
    readme = README.read_text()
    assert f"sudo python3 -m venv {SERVICE_VENV}\n" in readme
    assert f"sudo {SERVICE_VENV}/bin/pip install ." in readme
    scripts = re.findall(
        r'^(vnet[-a-z]*) = "vnet\.cli:', (ROOT / "pyproject.toml").read_text(), re.M
    )
    starts = _exec_starts()
    assert set(starts) == {"vnet-route.service", "vnet@.service"}
    for unit, program in starts.items():
        assert program.startswith(f"{SERVICE_VENV}/bin/"), (unit, program)
        assert program.rsplit("/", 1)[1] in scripts, (unit, program)


def _unit_root(tmp: Path, programs: bool) -> Path:
    """A root for systemd-analyze: the units, the targets they name, and the venv's programs."""
    root = tmp / ("root" if programs else "bare")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    for target in ("sysinit", "basic", "multi-user", "network-online", "shutdown"):
        (root / f"usr/lib/systemd/system/{target}.target").write_text("[Unit]\n")
    if programs:
        for program in set(_exec_starts().values()):
            path = root / program.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\n")
            path.chmod(0o755)
    return root


async def test_systemd_accepts_the_units_with_vnet_in_opt(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here")
    units = ["/etc/systemd/system/vnet-route.service", "/etc/systemd/system/vnet@home.service"]
    for programs in (True, False):
        root = _unit_root(tmp_path, programs)
        result = await run(analyze, "verify", f"--root={root}", *units, cwd=tmp_path, timeout=30)
        assert result is not None
        rc, output = result
        if programs:
            assert (rc, output) == (0, ""), output
        else:
            # The check bites: without the venv, systemd says the command is missing.
            assert rc != 0, output
            assert f"Command {SERVICE_VENV}/bin/vnet is not executable" in output, output
