"""Reading the files a configuration names: the config itself, token files, PEM files.

The file I/O that the pure vnet.core.config leaves to its callers (the route's
security set-up, the node's client, the command line and the console), in one
place so every failure is reported the same way: a ConfigError naming the file,
and the section and key that named it.

Only regular files are read, and only up to a cap: a token_file of
/dev/urandom would otherwise be read until memory runs out, /dev/zero the
same, and a FIFO with no writer would block the start for ever.
"""

from __future__ import annotations

import os
import ssl
import stat

from vnet.core.errors import ConfigError
from vnet.core.limits import quoted_if_odd

KIB = 1024
# A token is a line of text; 64 KiB is far more than any real one.
TOKEN_MAX_BYTES = 64 * KIB
# A certificate chain or key; real ones are a few KiB.
PEM_MAX_BYTES = 1024 * KIB
# config.ini: 2,000 serve sections fit in a tenth of this.
CONFIG_MAX_BYTES = 1024 * KIB

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _refused(reason: str) -> OSError:
    # An OSError with only strerror set: callers print exc.strerror.
    exc = OSError(reason)
    exc.strerror = reason
    return exc


def read_capped(path: str, cap: int, what: str) -> bytes:
    """The bytes of a regular file of at most cap bytes; OSError (with strerror) otherwise.

    O_NONBLOCK: opening a FIFO must not wait for a writer. fstat on the open
    descriptor, not stat on the name, so the file checked is the file read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except ValueError:
        raise _refused("the path contains a NUL character") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise _refused(f"is {kind}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        # Read to the cap and one byte past it: st_size may be stale or wrong.
        while size <= cap:
            chunk = os.read(fd, cap + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > cap:
            raise _refused(f"is larger than {cap // KIB} KiB, too large for {what}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_config_text(path: str) -> str:
    """A config file's text; ConfigError says why it cannot be read."""
    try:
        data = read_capped(path, CONFIG_MAX_BYTES, "a config file")
    except FileNotFoundError:
        raise ConfigError(path, None, None, "no such file") from None
    except OSError as exc:
        raise ConfigError(path, None, None, exc.strerror or str(exc)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, None, None, "is not UTF-8 text") from None


def read_text(path: str) -> str:
    """A token file's text, for vnet.core.config.resolve_secret (which reports OSError)."""
    return read_capped(path, TOKEN_MAX_BYTES, "a token").decode("utf-8")


def read_pem(config_path: str, section: str, key: str, path: str) -> bytes:
    """A certificate or key file named by [section] key of config_path."""
    try:
        return read_capped(path, PEM_MAX_BYTES, "a PEM file")
    except OSError as exc:
        raise ConfigError(
            config_path, section, key, f"cannot read {quoted_if_odd(path)}: {exc.strerror or exc}"
        ) from None


def check_key_pair(
    config_path: str,
    section: str,
    cert: str,
    key: str,
    names: tuple[str, str] = ("tls_cert", "tls_key"),
) -> None:
    """ConfigError unless `key` is the private key of certificate `cert`.

    names: the config keys that named the two files, for the error.

    gRPC reports a mismatch only as BoringSSL lines and a failure to bind
    (route) or to connect (node).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError):
        raise ConfigError(
            config_path, section, names[0], f"{cert} holds no PEM certificate"
        ) from None
    try:
        # A callback, not None: an encrypted key must not prompt on the terminal.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        if getattr(exc, "reason", "") == "KEY_VALUES_MISMATCH":
            why = f"{key} does not match {names[0]} {cert}"
        else:
            why = f"{key} holds no unencrypted PEM private key"
        raise ConfigError(config_path, section, names[1], why) from None


def check_ca(config_path: str, section: str, key: str, path: str) -> None:
    """ConfigError unless the file `path` ([section] key) holds a PEM certificate."""
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError):
        raise ConfigError(config_path, section, key, f"{path} holds no PEM certificate") from None
