"""pytest plugin loaded into an upstream suite run under ``lockscope instrument``: at the end
of the session it writes what the shim recorded to ``$LOCKSCOPE_PROBE_OUT`` (JSON), so the
comparison knows the suite really ran instrumented."""

from __future__ import annotations

import json
import os
from typing import Any


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    from lockscope.instrumentation import runtime

    shim = runtime.current
    out = os.environ.get("LOCKSCOPE_PROBE_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(
                {
                    "active": shim is not None,
                    "acquires": sum(shim.recorder.stats.snapshot()[1].values()) if shim else 0,
                    "errors": shim.recorder.errors if shim else 0,
                },
                f,
            )
