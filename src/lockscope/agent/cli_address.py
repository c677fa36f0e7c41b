"""The agent's listener addresses: ``HOST:PORT`` parsed, and checked before the start.

Can each listener bind its address?  A port in use or a host that does not resolve is
reported naming the listener and the setting that chose the address, instead of a bare
``[Errno 98]``.

The check binds and closes at once (with ``SO_REUSEADDR``, as the server itself binds), so
it never holds a port; a port taken between the check and the start still fails the
start, with the server's own message.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

__all__ = ["SettingsError", "listener_problem", "parse_address"]


class SettingsError(ValueError):
    """A flag, environment variable or config file value is invalid."""


def parse_address(value: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:4318`` for IPv6; ``:PORT`` means all interfaces) as a pair."""
    text = value.strip()
    if "://" in text:
        text = text.split("://", 1)[1].rstrip("/")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise SettingsError(f"{what} must be HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise SettingsError(f"{what}: port out of range in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or "0.0.0.0", port)


def listener_problem(listeners: Iterable[tuple[str, str, tuple[str, int]]]) -> str | None:
    """The first problem among ``(listener, setting, (host, port))``, or None."""
    for listener, setting, (host, port) in listeners:
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            infos = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            return (
                f"the {listener} cannot listen on {shown} ({setting}): the host {host!r} "
                f"does not resolve ({exc.strerror})"
            )
        if port == 0 or not infos:
            continue
        family, kind, proto, _name, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as exc:
            hint = " (another agent running?)" if "in use" in str(exc.strerror) else ""
            return (
                f"the {listener} cannot listen on {shown} ({setting}): "
                f"{exc.strerror or exc}{hint}; choose another address with {setting.split()[0]}"
            )
        finally:
            sock.close()
    return None
