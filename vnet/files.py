"""Reading the files a configuration names: the config itself, token files, PEM files.

The file I/O that the pure vnet.config leaves to its callers (the route's
security set-up, the node's client, the command line and the console), in one
place so every failure is reported the same way: a ConfigError naming the file,
and the section and key that named it.
"""

from __future__ import annotations

from vnet.errors import ConfigError


def read_config_text(path: str) -> str:
    """A config file's text; ConfigError says why it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(path, None, None, "no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, None, "is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(path, None, None, exc.strerror or str(exc)) from None


def read_text(path: str) -> str:
    """A token file's text, for vnet.config.resolve_secret (which reports OSError)."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_pem(config_path: str, section: str, key: str, path: str) -> bytes:
    """A certificate or key file named by [section] key of config_path."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(
            config_path, section, key, f"cannot read {path}: {exc.strerror or exc}"
        ) from None
