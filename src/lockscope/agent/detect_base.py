"""What the finding detectors share: the store they are attached to, the finding store they
report to, and the expiry of their one-shot findings.  A detector subclasses
:class:`FindingDetector` and subscribes in :meth:`FindingDetector.subscribe`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from lockscope.agent.config import AgentConfig
from lockscope.agent.findings import FindingStore

if TYPE_CHECKING:
    from lockscope.agent.store import LockStore

__all__ = ["NS", "FindingDetector"]

NS: Final = 1_000_000_000


class FindingDetector:
    """A store detector (:class:`~lockscope.agent.store_changes.Detector`) that reports
    findings; one-shot ones (active for ``finding_ttl``) expire on :meth:`tick`."""

    batches = False
    """Its :meth:`flush` does nothing, so the store skips it after each event; a subclass
    that overrides :meth:`flush` sets this to True."""

    def __init__(self, findings: FindingStore, config: AgentConfig) -> None:
        self._findings = findings
        self._config = config
        self._ttl_ns = int(config.finding_ttl * NS)
        self._store: LockStore | None = None

    def attach(self, store: LockStore) -> None:
        """Remember the store, then :meth:`subscribe` to it."""
        self._store = store
        self.subscribe(store)

    def subscribe(self, store: LockStore) -> None:
        """Subscribe to the changes the detector needs (override)."""

    def flush(self, now_ns: int) -> None:
        """Nothing is batched (override to batch)."""

    def tick(self, now_ns: int) -> None:
        """Resolve expired one-shot findings."""
        self._findings.expire_due(now_ns)

    @property
    def store(self) -> LockStore:
        """The store this detector is attached to."""
        assert self._store is not None, "attach the detector to a store first"
        return self._store
