"""alerts/: the Prometheus rule files pass ``promtool check rules`` and their unit tests
(``promtool test rules``), every alert is complete (for, severity, summary, description,
runbook link to an existing section), and the example Alertmanager config is valid."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lockscope.testing.prometheus import PrometheusServer

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
RULE_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
EXTRA_ALERTS = {"LockscopeProcessFlood"}
"""Alerts beyond the public contract's list (additions are not breaking)."""
SPEC_ALERTS = {
    "LockDeadlock",
    "LockStaleHolder",
    "LockMutualExclusionViolation",
    "LockOrderInversion",
    "LockHighContention",
    "LockAcquireErrors",
    "LockscopeAgentDown",
    "LockscopeEventsDropped",
}


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} missing: apt-get install {package}"
    return path


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_there_are_rules_and_tests() -> None:
    assert len(RULE_FILES) == 2
    assert len(RULE_TESTS) == 2


def test_promtool_check_rules() -> None:
    result = _run(_tool("promtool", "prometheus"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = _run(_tool("promtool", "prometheus"), "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_promtool_test_rules_can_fail(tmp_path: Path) -> None:
    """A wrong expectation fails: the rule tests above really check something."""
    wrong = tmp_path / "wrong.yml"
    wrong.write_text(
        f"""rule_files:
  - {ALERTS / "lockscope-findings.rules.yml"}
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'lockscope_deadlocks_active{{job="lockscope",instance="a"}}'
        values: '1x20'
    alert_rule_test:
      - eval_time: 2m
        alertname: LockDeadlock
        exp_alerts: []
""",
        encoding="utf-8",
    )
    result = _run(_tool("promtool", "prometheus"), "test", "rules", str(wrong))
    assert result.returncode != 0


def test_amtool_check_config_on_the_example() -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")
    result = _run(amtool, "check-config", str(ALERTS / "alertmanager.example.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def _anchors(markdown: str) -> set[str]:
    # GitHub's heading anchors: lowercase, spaces to dashes, punctuation dropped.
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(anchor)
    return anchors


@pytest.fixture(scope="module")
def loaded_rules() -> list[dict[str, Any]]:
    """The rules as Prometheus itself loaded them (``/api/v1/rules``)."""
    with PrometheusServer(rule_files=RULE_FILES) as prometheus:
        groups = prometheus.api("rules")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_is_complete(loaded_rules: list[dict[str, Any]]) -> None:
    anchors = _anchors(RUNBOOK.read_text(encoding="utf-8"))
    names = set()
    for rule in loaded_rules:
        assert rule["type"] == "alerting", rule
        name = rule["name"]
        names.add(name)
        assert rule["duration"] > 0, f"{name} has no `for`"
        assert rule["labels"].get("severity") in ("critical", "warning", "info"), name
        notes = rule["annotations"]
        assert notes.get("summary"), name
        assert len(notes.get("description", "")) > 40, name
        url = notes.get("runbook_url", "")
        assert url.endswith(f"docs/runbook.md#{name.lower()}"), (name, url)
        assert name.lower() in anchors, f"docs/runbook.md has no section for {name}"
    assert names == SPEC_ALERTS | EXTRA_ALERTS


def test_runbook_explains_every_alert() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    for name in SPEC_ALERTS:
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert "**What it means.**" in section, name
        assert "**What to do.**" in section, name
