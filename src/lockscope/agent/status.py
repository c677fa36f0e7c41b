"""Moved to :mod:`lockscope.client.status` (a client of the agent, not part of it); this
name keeps working."""

from lockscope.client.status import (
    AgentUnreachable,
    add_arguments,
    fetch_findings,
    render,
    run,
    table,
)

__all__ = ["AgentUnreachable", "add_arguments", "fetch_findings", "render", "run", "table"]
