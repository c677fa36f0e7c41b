"""Fencing tokens in tests: a held lock's token, which is never ``None``."""

from __future__ import annotations

from typing import Protocol


class _Tokened(Protocol):
    @property
    def fencing_token(self) -> int | None: ...


def held_token(lock: _Tokened) -> int:
    """``lock.fencing_token``, asserting the lock has one (it does while held)."""
    token = lock.fencing_token
    assert token is not None, "a held lock has a fencing token"
    return token
