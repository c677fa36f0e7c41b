"""instrumentation/config.py: the shim's configuration from the environment."""

from __future__ import annotations

from lockscope.instrumentation.config import DEFAULT_ENDPOINT, ShimConfig


def test_config_defaults_and_precedence() -> None:
    assert ShimConfig.from_env({}).endpoint == DEFAULT_ENDPOINT
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,x-a=1",
        "LOCKSCOPE_HEADERS": "x-a=2",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-res,deployment.environment=prod",
        "LOCKSCOPE_REPORT_AFTER": "0.5",
        "LOCKSCOPE_HEARTBEAT": "nonsense",
        "LOCKSCOPE_DISABLED": "TRUE",
    }
    config = ShimConfig.from_env(env)
    assert config.endpoint == "http://collector:4318"
    assert config.headers == {"Authorization": "Bearer abc", "x-a": "2"}
    assert config.service_name == "from-res"
    assert config.resource["deployment.environment"] == "prod"
    assert config.report_after == 0.5
    assert config.heartbeat == 1.0  # invalid value: default
    assert config.disabled
    env["LOCKSCOPE_ENDPOINT"] = "http://agent:4318"
    env["OTEL_SERVICE_NAME"] = "svc"
    config = ShimConfig.from_env(env)
    assert (config.endpoint, config.service_name) == ("http://agent:4318", "svc")
