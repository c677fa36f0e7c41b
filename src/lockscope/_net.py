"""Connection failures in words, shared by every client of the agent (the shim's OTLP
transport, ``lockscope check``, ``status``, ``top``), so each says what failed the same way."""

from __future__ import annotations

import errno
import socket
import urllib.error
from typing import Literal

__all__ = ["FailureKind", "describe_os_error"]

FailureKind = Literal["refused", "timeout", "unresolved", "unreachable"]


def describe_os_error(exc: BaseException) -> tuple[FailureKind, str]:
    """What a connection failure was: its kind and a short reason for people."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout", "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused (nothing listens there)"
    if isinstance(exc, socket.gaierror):
        return "unresolved", f"the host name does not resolve ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable", f"no route to the host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return "unreachable", exc.strerror
    return "unreachable", str(exc) or type(exc).__name__
