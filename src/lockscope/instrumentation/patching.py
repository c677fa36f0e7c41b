"""Applying and removing the wrappers, exactly.

Targets are applied when their module is imported (a post-import hook, or at once if it
already is), so an app pays nothing for libraries it never imports; a library that is not
installed is skipped (decided per target, not per distribution).  Every wrapper is
installed with :func:`wrapt.wrap_function_wrapper` and recorded, so :meth:`Patcher.restore`
puts back exactly what was there, including "inherited, not defined here".
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import wrapt

__all__ = ["Patcher", "importable"]

_log = logging.getLogger("lockscope.instrumentation")
_MISSING = object()


def importable(module_name: str) -> bool:
    """Whether the top-level package of ``module_name`` is installed (without importing it)."""
    top = module_name.partition(".")[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def is_ours(value: object) -> bool:
    """Whether ``value`` is a wrapper the shim installed."""
    if isinstance(value, wrapt.ObjectProxy):
        return bool(getattr(value, "_self_lockscope", False))
    return bool(getattr(value, "_lockscope_replacement", False))


def _patchable(owner: Any, attr: str) -> bool:
    """Whether ``owner.attr`` exists and is not ours yet, looking in the class it comes
    from (a subclass inherits its base's wrapper: wrapping again would report twice)."""
    for klass in getattr(owner, "__mro__", (owner,)):
        found = vars(klass).get(attr, _MISSING)
        if found is not _MISSING:
            return not is_ours(found)
    return False


class Patcher:
    """Installs wrappers and remembers how to remove them."""

    def __init__(self) -> None:
        self._patches: list[tuple[Any, str, object]] = []
        self.active = False
        self._generation = 0

    def wrap(self, owner: Any, attr: str, wrapper: Callable[..., Any]) -> bool:
        """Wrap ``owner.attr`` unless it (or the base class it comes from) is already ours."""
        if not _patchable(owner, attr):
            return False
        original = vars(owner).get(attr, _MISSING)
        proxy = wrapt.wrap_function_wrapper(owner, attr, wrapper)
        proxy._self_lockscope = True  # type: ignore[attr-defined]
        self._patches.append((owner, attr, original))
        return True

    def replace(
        self, owner: Any, attr: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
    ) -> bool:
        """Set ``owner.attr`` to ``make(original)``, a plain function, unless it is ours.

        For the hottest paths (a database statement): a plain function calling the
        original costs a fifth of a wrapt proxy's call.  ``make`` must keep the original's
        signature and behaviour; :meth:`restore` puts the original back like a wrapper.
        """
        if not _patchable(owner, attr):
            return False
        original = vars(owner).get(attr, _MISSING)
        replacement = make(getattr(owner, attr))
        replacement._lockscope_replacement = True  # type: ignore[attr-defined]
        setattr(owner, attr, replacement)
        self._patches.append((owner, attr, original))
        return True

    def when_imported(self, module_name: str, apply: Callable[[ModuleType], None]) -> None:
        """Run ``apply(module)`` once ``module_name`` is imported, if it is installed."""
        if not importable(module_name):
            _log.debug("lockscope: %s not installed, not instrumented", module_name)
            return
        generation = self._generation

        def hook(module: ModuleType) -> None:
            if not self.active or generation != self._generation:
                return  # uninstrumented since the hook was registered
            try:
                apply(module)
            except Exception:
                _log.warning("lockscope: could not instrument %s", module_name, exc_info=True)

        wrapt.register_post_import_hook(hook, module_name)

    def start(self) -> None:
        """Begin a generation of patches."""
        self._generation += 1
        self.active = True

    def restore(self) -> None:
        """Remove every wrapper, newest first; hooks not yet fired become no-ops."""
        self.active = False
        self._generation += 1
        while self._patches:
            owner, attr, original = self._patches.pop()
            try:
                if original is _MISSING:
                    delattr(owner, attr)
                else:
                    setattr(owner, attr, original)
            except Exception:
                _log.warning("lockscope: could not restore %r.%s", owner, attr, exc_info=True)
