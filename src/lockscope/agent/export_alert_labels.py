"""What an alert about a finding says: its labels (one set per service) and annotations.

:mod:`lockscope.agent.export_alertmanager` delivers the alerts; this module decides their
content, so routing (which labels, which service, which lock) is in one place.  See that
module's docstring for the routing rules.
"""

from __future__ import annotations

from typing import Final

from lockscope.agent.findings import (
    ALERT_NAMES,
    DEADLOCK,
    ORDER_INVERSION,
    STALE_HOLDER,
    VIOLATION,
    Finding,
)

__all__ = [
    "SEVERITY",
    "alert_label_sets",
    "alert_labels",
    "describe",
    "finding_services",
    "runbook_link",
    "summary",
]

_SUMMARIES: Final = {
    DEADLOCK: "Deadlock on {lock}",
    STALE_HOLDER: "Stale holder of {lock} ({reason})",
    VIOLATION: "Mutual exclusion broken on {lock} ({reason})",
    ORDER_INVERSION: "Lock-order inversion between {lock}",
}


def runbook_link(runbook_url: str, alertname: str) -> str:
    """The runbook URL of one alert: ``{alertname}`` in ``runbook_url`` replaced by the
    alert's name in lower case, else ``#alertname`` appended."""
    if "{alertname}" in runbook_url:
        return runbook_url.replace("{alertname}", alertname.lower())
    return f"{runbook_url}#{alertname.lower()}"


def summary(finding: Finding, labels: dict[str, str]) -> str:
    """The ``summary`` annotation (naming every lock of the finding)."""
    template = _SUMMARIES.get(finding.kind, "{kind} on {lock}")
    return template.format(
        lock=labels.get("lock", "?"), reason=labels.get("reason", "?"), kind=finding.kind
    )


SEVERITY: Final = {
    DEADLOCK: "critical",
    VIOLATION: "critical",
    STALE_HOLDER: "warning",
    ORDER_INVERSION: "warning",
}
"""Alert severity per finding kind."""


def alert_labels(finding: Finding) -> dict[str, str]:
    """The finding's Alertmanager labels: ``alertname``, ``kind``, ``id``, ``lock``
    (templates), ``system`` (not for order inversions: their pairs name the systems),
    ``service``, ``reason`` and ``severity``; empty values are left out."""
    labels = {
        "alertname": ALERT_NAMES.get(finding.kind)
        or "Lock" + finding.kind.title().replace("_", ""),
        "kind": finding.kind,
        "id": finding.id,
        "lock": ",".join(finding.templates),
        "system": "" if finding.kind == ORDER_INVERSION else ",".join(finding.systems),
        "service": ",".join(finding.services),
        "reason": finding.reason or "",
        "severity": SEVERITY.get(finding.kind, "warning"),
    }
    return {k: v for k, v in labels.items() if v}


def finding_services(finding: Finding) -> list[str]:
    """Every service a finding involves (sorted)."""
    return sorted(set(finding.services) | set(_service_locks(finding)))


def _service_locks(finding: Finding) -> dict[str, tuple[str, ...]]:
    """Each service's part of the finding: the lock templates that are its own."""
    data = finding.data
    parts: dict[str, set[str]] = {}
    if finding.kind == DEADLOCK:
        template_of = dict(
            zip(data.get("lock_keys", []), data.get("lock_templates", []), strict=False)
        )
        for p in data.get("participants", []):
            held = [template_of[k] for k in p.get("hold_keys", []) if k in template_of]
            if not held and p.get("waits_for_key") in template_of:
                held = [template_of[p["waits_for_key"]]]
            parts.setdefault(str(p.get("service")), set()).update(held)
    elif finding.kind == ORDER_INVERSION:
        for pair in data.get("pairs", []):
            mine = parts.setdefault(str(pair.get("service")), set())
            mine.update(str(pair[k]) for k in ("first", "second") if pair.get(k))
    elif finding.kind == VIOLATION:
        other = data.get("other")
        for service in (
            data.get("service"),
            other.get("service") if isinstance(other, dict) else None,
        ):
            if service:
                parts.setdefault(str(service), set()).update(finding.templates)
    return {service: tuple(sorted(locks)) for service, locks in parts.items() if service}


def alert_label_sets(finding: Finding) -> list[dict[str, str]]:
    """The label sets of the finding's alerts: one per service, each with that service
    alone in ``service`` and its own part in ``lock`` (see the module docstring)."""
    base = alert_labels(finding)
    per_service = _service_locks(finding)
    for service in finding.services:
        per_service.setdefault(service, ())
    if not per_service:
        return [base]
    out = []
    for service, locks in sorted(per_service.items()):
        labels = {**base, "service": service}
        if locks:
            labels["lock"] = ",".join(locks)
        out.append(labels)
    return out


def describe(finding: Finding) -> str:
    """The ``description`` annotation: the cycle, holder, tokens... in words."""
    data = finding.data
    if finding.kind == DEADLOCK:
        parts = []
        for p in data.get("participants", []):
            holds = ", ".join(str(h) for h in p.get("holds", [])) or "nothing"
            parts.append(
                f"{p.get('actor')} ({p.get('service')} pid {p.get('pid')}) holds {holds} "
                f"and waits for {p.get('waits_for')} since {p.get('waiting_since')}"
            )
        cycle = " -> ".join(str(name) for name in data.get("locks", []))
        victim = data.get("victim")
        text = f"Deadlock cycle over {cycle}: " + "; ".join(parts) + "."
        if victim:
            text += f" Suggested victim: {victim}."
        return text
    return finding.text
