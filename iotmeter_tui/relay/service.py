"""`iotmeter alert-relay`: Alertmanager's webhook (payload version 4) -> one GitHub issue per
alert group. The issue carries a marker of the group key, and every delivery first lists the
open issues with the relay's label, so a delivery repeated (by Alertmanager, or after a relay
restart) finds its issue instead of opening a second one. The body also carries a digest of the
firing alerts: the same delivery twice changes nothing, new or changed alerts get a comment, and
`resolved` closes the issue. Deliveries are handled one at a time (list, then open, must not
interleave)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from iotmeter_tui.relay.github import GitHubClient, GitHubError, GitHubUnavailable, Issue
from iotmeter_tui.relay.metrics import RelayMetrics

log = logging.getLogger(__name__)

LABEL: Final = "iotmeter-alert"
MARKER: Final = re.compile(r"<!-- iotmeter-alert-group: ([0-9a-f]{32}) -->")
DIGEST: Final = re.compile(r"<!-- iotmeter-alert-digest: ([0-9a-f]{32}) -->")
MAX_ALERTS_SHOWN: Final = 50


class BadPayload(ValueError):
    """The webhook body is not an Alertmanager v4 payload; nothing is done with it."""


@dataclass(frozen=True, slots=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    fingerprint: str
    generator_url: str


@dataclass(frozen=True, slots=True)
class Notification:
    status: str  # firing | resolved
    group_key: str
    group_labels: dict[str, str]
    common_labels: dict[str, str]
    common_annotations: dict[str, str]
    external_url: str
    alerts: list[Alert]


def _str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BadPayload(f"{what} must be an object of strings")
    return value


def parse_notification(body: bytes) -> Notification:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadPayload(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadPayload("not a JSON object")
    if data.get("version") != "4":
        raise BadPayload(f"version must be \"4\", got {data.get('version')!r}")
    status, group_key = data.get("status"), data.get("groupKey")
    if status not in ("firing", "resolved"):
        raise BadPayload("status must be firing or resolved")
    if not isinstance(group_key, str) or not group_key:
        raise BadPayload("groupKey missing")
    raw_alerts = data.get("alerts")
    if not isinstance(raw_alerts, list) or not raw_alerts:
        raise BadPayload("alerts must be a non-empty list")
    alerts = []
    for item in raw_alerts:
        if not isinstance(item, dict) or item.get("status") not in ("firing", "resolved"):
            raise BadPayload("every alert needs a status of firing or resolved")
        alerts.append(Alert(
            status=item["status"],
            labels=_str_map(item.get("labels"), "alert labels"),
            annotations=_str_map(item.get("annotations", {}), "alert annotations"),
            starts_at=str(item.get("startsAt", "")),
            fingerprint=str(item.get("fingerprint", "")),
            generator_url=str(item.get("generatorURL", "")),
        ))
    return Notification(
        status=status, group_key=group_key,
        group_labels=_str_map(data.get("groupLabels", {}), "groupLabels"),
        common_labels=_str_map(data.get("commonLabels", {}), "commonLabels"),
        common_annotations=_str_map(data.get("commonAnnotations", {}), "commonAnnotations"),
        external_url=str(data.get("externalURL", "")),
        alerts=alerts,
    )


# --- rendering: every value came from the outside, so it is escaped -----------------------

def _md(text: str, limit: int = 500) -> str:
    """One table cell or line: no HTML (so no fake marker), no table breaks, no newlines."""
    text = text[:limit].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"[\r\n\t]+", " ", text).replace("|", "\\|")


def _label(prefix: str, value: str) -> str:
    return f"{prefix}:{re.sub(r'[^A-Za-z0-9_.-]', '_', value)[:40]}"


def group_id(group_key: str) -> str:
    return hashlib.sha256(group_key.encode()).hexdigest()[:32]


def firing_digest(n: Notification) -> str:
    firing = sorted(f"{a.fingerprint}@{a.starts_at}" for a in n.alerts if a.status == "firing")
    return hashlib.sha256("\n".join(firing).encode()).hexdigest()[:32]


def issue_title(n: Notification) -> str:
    name = n.common_labels.get("alertname") or n.group_labels.get("alertname", "alert")
    severity = n.common_labels.get("severity", "unknown")
    summary = n.common_annotations.get("summary", "")
    title = f"[{severity}] {name}" + (f": {summary}" if summary else "")
    return re.sub(r"[\r\n\t]+", " ", title)[:200]


def alerts_section(n: Notification) -> str:
    lines = []
    for alert in n.alerts[:MAX_ALERTS_SHOWN]:
        labels = ", ".join(f"`{_md(k, 100)}={_md(v, 200)}`" for k, v in sorted(
            alert.labels.items()))
        lines.append(f"- **{alert.status}** since {_md(alert.starts_at, 40)}: {labels}")
        for key, value in sorted(alert.annotations.items()):
            lines.append(f"  - {_md(key, 100)}: {_md(value)}")
        if alert.generator_url.startswith(("http://", "https://")):
            lines.append(f"  - [expression in Prometheus]({_md(alert.generator_url, 1000)})")
    if len(n.alerts) > MAX_ALERTS_SHOWN:
        lines.append(f"- … and {len(n.alerts) - MAX_ALERTS_SHOWN} more")
    return "\n".join(lines)


def issue_body(n: Notification, dashboard_url: str | None = None) -> str:
    ann = n.common_annotations
    links = []
    fallback = {"dashboard_url": dashboard_url or ""}  # the relay's setting; the alert's wins
    for key, text in (("runbook_url", "Runbook"), ("dashboard_url", "Dashboard")):
        url = ann.get(key) or fallback.get(key, "")
        if url.startswith(("http://", "https://")):
            links.append(f"[{text}]({_md(url, 1000)})")
    if n.external_url.startswith(("http://", "https://")):
        links.append(f"[Alertmanager]({_md(n.external_url, 1000)})")
    parts = [
        f"**{_md(ann.get('summary', 'Alert'))}**",
        "",
        _md(ann.get("description", ""), 2000),
        "",
        " · ".join(links),
        "",
        "| label | value |",
        "|---|---|",
        *(f"| {_md(k, 100)} | {_md(v, 200)} |" for k, v in sorted(n.common_labels.items())),
        "",
        "### Alerts",
        alerts_section(n),
        "",
        f"<!-- iotmeter-alert-group: {group_id(n.group_key)} -->",
        f"<!-- iotmeter-alert-digest: {firing_digest(n)} -->",
    ]
    return "\n".join(parts)


# --- the relay --------------------------------------------------------------------------------

class AlertRelay:
    def __init__(self, github: GitHubClient, webhook_token: str, metrics: RelayMetrics, *,
                 dashboard_url: str | None = None) -> None:
        self.github = github
        self.dashboard_url = dashboard_url
        self._webhook_token = webhook_token.encode()
        self.metrics = metrics
        self.github_down: str | None = None
        self._lock = threading.Lock()

    def readiness(self) -> list[str]:
        return ["github"] if self.github_down else []

    def handle_webhook(self, headers: Mapping[str, str],
                       body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        request_id = re.sub(r"[^A-Za-z0-9_.-]", "", headers.get("x-request-id", ""))[:64] \
            or uuid.uuid4().hex
        extra = {"X-Request-Id": request_id}
        context = {"request_id": request_id}
        if not self._authorized(headers.get("authorization", "")):
            self.metrics.webhooks.labels("unauthorized").inc()
            log.warning("webhook refused: bad or missing bearer token",
                        extra={"event": "webhook_unauthorized", **context})
            return 401, {"error": "unauthorized"}, extra | {"WWW-Authenticate": "Bearer"}
        try:
            notification = parse_notification(body)
        except BadPayload as exc:
            self.metrics.webhooks.labels("bad_request").inc()
            log.warning("webhook refused: bad payload", extra={
                "event": "webhook_bad_request", "problem": str(exc), **context})
            return 400, {"error": str(exc)}, extra
        try:
            with self._lock:
                action, number = self.apply(notification)
        except GitHubUnavailable as exc:
            self.github_down = str(exc)
            self.metrics.webhooks.labels("failed").inc()
            log.error("delivery not applied; Alertmanager will retry", extra={
                "event": "webhook_failed", "problem": str(exc), **context})
            return 503, {"error": str(exc)}, extra
        except GitHubError as exc:
            # A refusal (bad token, no such repository): still 5xx, so nothing is dropped
            # while an operator fixes it; the log says what to fix.
            self.github_down = str(exc)
            self.metrics.webhooks.labels("failed").inc()
            log.error("GitHub refused the delivery", extra={
                "event": "webhook_failed", "problem": str(exc), **context})
            return 502, {"error": str(exc)}, extra
        self.github_down = None
        self.metrics.webhooks.labels("ok").inc()
        self.metrics.issue_actions.labels(action).inc()
        log.info("alert group delivered", extra={
            "event": "webhook_delivered", "action": action, "issue": number,
            "status": notification.status, "group": group_id(notification.group_key),
            "alerts": len(notification.alerts), **context})
        return 200, {"action": action, "issue": number}, extra

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._webhook_token)

    def apply(self, n: Notification) -> tuple[str, int | None]:
        """What one delivery does: (opened | commented | closed | unchanged, issue number)."""
        marker = f"<!-- iotmeter-alert-group: {group_id(n.group_key)} -->"
        issues = self.github.open_issues(LABEL)
        self.metrics.issues_open.set(len(issues))
        issue = next((i for i in issues if marker in i.body), None)
        if n.status == "resolved":
            if issue is None:
                return "unchanged", None  # closed already (a repeated resolve), or never opened
            self.github.comment(issue.number, "Resolved.\n\n" + alerts_section(n))
            self.github.edit(issue.number, state="closed", state_reason="completed")
            self.metrics.issues_open.set(len(issues) - 1)
            return "closed", issue.number
        if issue is None:
            number = self.github.create_issue(issue_title(n), issue_body(n, self.dashboard_url), [
                LABEL,
                _label("severity", n.common_labels.get("severity", "unknown")),
                _label("alertname", n.common_labels.get("alertname", "mixed")),
            ])
            self.metrics.issues_open.set(len(issues) + 1)
            return "opened", number
        if _digest_of(issue) == firing_digest(n):
            return "unchanged", issue.number  # the same delivery again
        self.github.comment(issue.number, "Firing again.\n\n" + alerts_section(n))
        self.github.edit(issue.number, body=issue_body(n, self.dashboard_url))
        return "commented", issue.number


def _digest_of(issue: Issue) -> str | None:
    match = DIGEST.search(issue.body)
    return match.group(1) if match else None
