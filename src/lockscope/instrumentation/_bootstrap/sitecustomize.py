"""Loaded by ``lockscope instrument``: activates the shim, then runs any other sitecustomize."""

import importlib.machinery
import importlib.util
import os
import sys


def _activate() -> None:
    try:
        from lockscope.instrumentation import LockscopeInstrumentor

        LockscopeInstrumentor().instrument()
    except Exception as exc:  # fail open: the app runs uninstrumented
        print(f"lockscope: instrumentation failed: {exc!r}", file=sys.stderr)


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_activate()
_chain()
