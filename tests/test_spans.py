"""instrumentation/spans.py: what the sampler surely decides (the SDK is asked only if unsure)."""

from __future__ import annotations

from lockscope.instrumentation.spans import SpanFactory


def test_spans_skip_the_sdk_only_when_the_sampler_surely_drops() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    never = SpanFactory(TracerProvider(sampler=ALWAYS_OFF))
    assert never.surely_dropped()
    ratio = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    factory = SpanFactory(ratio)
    assert not factory.surely_dropped()  # a root: the ratio sampler must decide
    with ratio.get_tracer("t").start_as_current_span("unsampled parent"):
        assert factory.surely_dropped()
    sampled = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    factory = SpanFactory(sampled)
    with sampled.get_tracer("t").start_as_current_span("sampled parent"):
        assert not factory.surely_dropped()
    assert not SpanFactory(TracerProvider(sampler=TraceIdRatioBased(0.5))).surely_dropped()


def test_spans_know_when_the_sampler_surely_records() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    assert SpanFactory(TracerProvider(sampler=ALWAYS_ON)).certainty() == 1
    assert SpanFactory(TracerProvider(sampler=ALWAYS_OFF)).certainty() == -1
    assert SpanFactory(TracerProvider(sampler=TraceIdRatioBased(1.0))).certainty() == 0
    default = TracerProvider()  # ParentBased(ALWAYS_ON)
    assert SpanFactory(default).certainty() == 1
    ratio = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    factory = SpanFactory(ratio)
    assert factory.certainty() == 0  # a root: the ratio sampler decides
    with ratio.get_tracer("t").start_as_current_span("sampled parent"):
        assert factory.certainty() == 1
    assert SpanFactory(TracerProvider(sampler=ParentBased(ALWAYS_OFF))).certainty() == -1
