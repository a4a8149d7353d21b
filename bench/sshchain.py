"""The OpenSSH chain people use instead of vnet, started per run on 127.0.0.1.

A throwaway sshd stands in for the route; `ssh -N -R` is the serving node ("home": remote
forwards on the sshd back to the target) and `ssh -N -L` the using node ("office": local ports
forwarded through the sshd to those remote forwards). So a connection goes

    client -> ssh -L -> sshd -> ssh -R -> target

with every byte encrypted twice (office to sshd, sshd to home), as in real use. Keys are made
for this run in the temp directory; nothing outside it is read or written, except that sshd
insists on its privilege-separation directory existing.
"""

from __future__ import annotations

import functools
import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.client import Address, probe_echo, probe_listen, probe_sink
from bench.procs import HOST, BenchError, Children, free_port, wait_ready

# Options both ssh clients share. BatchMode: never prompt (a prompt would hang the run);
# ExitOnForwardFailure: a forward that cannot be set up kills ssh, which Children.check sees.
SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "ExitOnForwardFailure=yes",
    "-o", "LogLevel=ERROR",
]  # fmt: skip


def find_sshd() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    # /usr/sbin is often not on a non-root PATH.
    return "/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None


def missing() -> str | None:
    """Why the ssh path cannot run here, or None."""
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (Debian: apt-get install openssh-client)"
    if find_sshd() is None:
        return "`sshd` is not installed (Debian: apt-get install openssh-server)"
    return None


def version() -> str:
    try:
        done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (done.stderr or done.stdout).strip() or "unknown"


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vnet-bench", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _sshd_config(work: Path, port: int) -> Path:
    host_key, client_key = work / "ssh_host_key", work / "client_key"
    _keygen(host_key)
    _keygen(client_key)
    authorized = work / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    config = work / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {HOST}",
                f"Port {port}",
                f"HostKey {host_key}",
                f"PidFile {work / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "UsePAM no",
                # The temp directory's modes are not what sshd expects of a home directory.
                "StrictModes no",
                "AllowTcpForwarding yes",
                "GatewayPorts no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UseDNS no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    return config


@dataclass
class SshChain:
    sink: Address
    echo: Address
    # role -> pid, for CPU accounting.
    processes: dict[str, int]


def start_forwards(
    children: Children, workdir: Path, targets: dict[str, int]
) -> tuple[dict[str, Address], dict[str, int]]:
    """The chain with one forward per role to 127.0.0.1:targets[role]: the local address of
    each role's forward, and role -> pid of the chain's processes. Returns once every local
    port listens; whether a connection gets through is the caller's probe to make."""
    sshd = find_sshd()
    assert sshd is not None, "call missing() first"
    work = workdir / "ssh"
    work.mkdir(mode=0o700)
    port = free_port()
    config = _sshd_config(work, port)
    if os.geteuid() == 0:
        # sshd refuses to start without it; creating it is what the Debian unit does too.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    daemon = children.start("sshd", [sshd, "-D", "-e", "-f", str(config)])
    wait_ready("sshd", lambda: probe_listen((HOST, port)), children)
    login = [
        "ssh", "-N", "-p", str(port), "-i", str(work / "client_key"), *SSH_OPTIONS,
        f"{getpass.getuser()}@{HOST}",
    ]  # fmt: skip
    remote = {role: (free_port(), target) for role, target in targets.items()}
    home_args = [a for r, t in remote.values() for a in ("-R", f"{r}:{HOST}:{t}")]
    home = children.start("ssh-home", [*login[:2], *home_args, *login[2:]])
    for rport, _ in remote.values():
        wait_ready("ssh -R", functools.partial(probe_listen, (HOST, rport)), children)
    local = {role: free_port() for role in remote}
    office_args = [
        a for role, lp in local.items() for a in ("-L", f"{lp}:{HOST}:{remote[role][0]}")
    ]
    office = children.start("ssh-office", [*login[:2], *office_args, *login[2:]])
    for lport in local.values():
        wait_ready("ssh -L", functools.partial(probe_listen, (HOST, lport)), children)
    if daemon.proc.poll() is not None:
        raise BenchError("sshd exited during start-up")
    addresses = {role: (HOST, lport) for role, lport in local.items()}
    processes = {"ssh office": office.proc.pid, "sshd": daemon.proc.pid, "ssh home": home.proc.pid}
    return addresses, processes


def start(children: Children, workdir: Path, sink_port: int, echo_port: int) -> SshChain:
    local, processes = start_forwards(children, workdir, {"sink": sink_port, "echo": echo_port})
    sink, echo = local["sink"], local["echo"]
    wait_ready("ssh tunnel", lambda: probe_echo(echo), children)
    wait_ready("ssh tunnel", lambda: probe_sink(sink), children)
    return SshChain(sink, echo, processes)
