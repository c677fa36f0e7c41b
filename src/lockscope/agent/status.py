"""Deprecated: moved to :mod:`lockscope.client.status` (a client of the agent, not part of
it).  This name keeps working and warns once on import."""

import warnings

from lockscope.client.status import (
    AgentUnreachable,
    add_arguments,
    fetch_findings,
    render,
    run,
    table,
)

__all__ = ["AgentUnreachable", "add_arguments", "fetch_findings", "render", "run", "table"]

warnings.warn(
    "lockscope.agent.status moved to lockscope.client.status",
    DeprecationWarning,
    stacklevel=2,
)
