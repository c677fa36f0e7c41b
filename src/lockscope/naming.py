"""Lock-name templating: ``order:1234`` -> ``order:{id}`` (docs/design.md, principle 6:
bounded everything).

Metric labels and lock-order pairs use the template, never the raw name, so a lock per
order id does not become a series per order id.  User rules (regular expression ->
replacement) run first; then UUIDs, long hex strings and digit runs collapse.  The shim and
the agent share this code so both sides agree on the template of a name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["DEFAULT_TEMPLATER", "LockNameTemplater", "template"]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Hex runs count only when they contain a digit and are long (commit ids, digests, tokens),
# so words such as "deadbeef" in a name stay readable while ids collapse.
_HEX = re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{16,}\b")
_DIGITS = re.compile(r"\d+")


class LockNameTemplater:
    """Maps lock names to templates with user rules plus the built-in collapses.

    ``rules`` are ``(pattern, replacement)`` pairs applied in order with :func:`re.sub`
    semantics, e.g. ``(r"^tenant/[^/]+/", "tenant/{tenant}/")``.
    """

    def __init__(self, rules: Iterable[tuple[str, str]] = (), cache_size: int = 4096) -> None:
        self.rules = [(re.compile(pattern), replacement) for pattern, replacement in rules]
        self._cached = lru_cache(maxsize=cache_size)(self._template)

    def _template(self, name: str) -> str:
        for pattern, replacement in self.rules:
            name = pattern.sub(replacement, name)
        name = _UUID.sub("{uuid}", name)
        name = _HEX.sub("{hex}", name)
        return _collapse_outside(name)

    def __call__(self, name: str) -> str:
        """The template of ``name``."""
        return self._cached(name)


def _collapse_outside(name: str) -> str:
    # Digits inside a placeholder a rule produced ({id2}) must not be rewritten.
    parts = re.split(r"(\{[^{}]*\})", name)
    return "".join(p if p.startswith("{") else _DIGITS.sub("{id}", p) for p in parts)


DEFAULT_TEMPLATER = LockNameTemplater()


def template(name: str) -> str:
    """The template of ``name`` under the built-in rules only."""
    return DEFAULT_TEMPLATER(name)
