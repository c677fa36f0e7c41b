"""The live shim of this process: recorder, spans, metrics and reporter, wired together.

:data:`current` is the one :class:`Shim` while instrumentation is active (``None``
otherwise); every wrapper reads it first.  After ``fork()`` the child gets an empty
registry, a new ``service.instance.id`` and its own reporter threads.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import uuid
from typing import Any

from opentelemetry import trace

from lockscope import __version__, events
from lockscope.instrumentation.config import ShimConfig
from lockscope.instrumentation.metrics_export import LockMetrics
from lockscope.instrumentation.otlp_fanout import transport_for
from lockscope.instrumentation.recorder import Recorder, Wait
from lockscope.instrumentation.reporter import Reporter
from lockscope.instrumentation.spans import SpanFactory

__all__ = ["Shim", "current"]

_log = logging.getLogger("lockscope.instrumentation")

current: Shim | None = None
"""The active shim, or ``None``."""

_fork_hook_installed = False


def _thread_name(ident: int) -> str | None:
    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    return thread.name if thread is not None else None


def tracing_configured(tracer_provider: Any = None) -> bool:
    """Whether spans can record: the app has a real (SDK) TracerProvider."""
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    return type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


class Shim:
    """Everything the instrumentation runs in this process."""

    def __init__(
        self, config: ShimConfig, tracer_provider: Any = None, meter_provider: Any = None
    ) -> None:
        self.config = config
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.recorder = Recorder(config.report_after, config.queue_size)
        self.recorder.thread_names = _thread_name
        self.generation = 0
        """Bumped in a forked child, so per-process lock identities are rebuilt."""
        self._new_process()
        self.spans: SpanFactory | None = None
        self._refresh_tracing()

    def _new_process(self) -> None:
        config = self.config
        self.pid = os.getpid()
        self.instance_id = uuid.uuid4().hex
        self.transport = transport_for(config)
        self.reporter = Reporter(
            self.recorder,
            self.transport,
            self.resource,
            report_after=config.report_after,
            heartbeat=config.heartbeat,
            probes=self._probe_for,
            tick=self._tick,
        )
        self.metrics = LockMetrics(
            config.metrics_export,
            config.metrics_interval,
            self.resource,
            self.reporter.submit,
            self.meter_provider,
        )

    def resource(self) -> dict[str, Any]:
        """The OTLP resource of this process (service, host, pid, instance)."""
        attrs: dict[str, Any] = dict(self.config.resource)
        attrs.update(
            {
                events.RES_SERVICE_NAME: self.config.service_name,
                events.RES_HOST_NAME: self.config.host_name,
                events.RES_PROCESS_PID: self.pid,
                events.RES_SERVICE_INSTANCE: self.instance_id,
                "telemetry.sdk.name": "lockscope",
                "telemetry.sdk.language": "python",
                "telemetry.sdk.version": __version__,
            }
        )
        return attrs

    def start(self) -> None:
        """Start the reporter and arrange the exit flush and the fork hook."""
        global _fork_hook_installed
        self.reporter.start()
        atexit.register(self._at_exit)
        if not _fork_hook_installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_installed = True

    def stop(self, flush_timeout: float = 1.0) -> None:
        """Stop the threads after a bounded flush."""
        atexit.unregister(self._at_exit)
        self._at_exit(flush_timeout)

    def _at_exit(self, flush_timeout: float = 1.0) -> None:
        try:
            self.recorder.fold_light()
            self.metrics.tick(self.recorder, force=True)
            self.reporter.stop(flush_timeout)
        except Exception:
            _log.debug("lockscope: exit flush failed", exc_info=True)

    def after_fork(self) -> None:
        """In the child: a fresh registry and reporter, a new process identity."""
        self.recorder.reset()  # a fresh registry, its stats included
        self.generation += 1
        self._new_process()
        self.reporter.start()

    def _refresh_tracing(self) -> None:
        if self.spans is None and tracing_configured(self.tracer_provider):
            self.spans = SpanFactory(self.tracer_provider)

    def _tick(self) -> None:
        self.recorder.fold_light()
        self.metrics.tick(self.recorder)
        self._refresh_tracing()

    def _probe_for(self, wait: Wait) -> Any:
        adapter = wait.info.adapter
        if adapter is None:
            return None
        return adapter.probe_for(wait)


def _after_fork_in_child() -> None:
    shim = current
    if shim is None:
        return
    try:
        shim.after_fork()
    except Exception:
        _log.debug("lockscope: re-initialising after fork failed", exc_info=True)
