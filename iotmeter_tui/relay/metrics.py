"""The alert relay's Prometheus metrics (docs/operations.md lists them)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
)


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks = Counter(
            "iotmeter_relay_webhooks", "Alertmanager webhook deliveries, by how they were answered "
            "(ok, unauthorized, bad_request, failed)", ["result"], registry=r)
        self.issue_actions = Counter(
            "iotmeter_relay_issue_actions", "What deliveries did to GitHub issues (opened, "
            "commented, closed, unchanged)", ["action"], registry=r)
        self.github_requests = Counter(
            "iotmeter_relay_github_requests", "GitHub API calls by answer "
            "(2xx, 4xx, 5xx, rate_limited, error)", ["status"], registry=r)
        self.github_retries = Counter(
            "iotmeter_relay_github_retries", "GitHub API calls repeated after a 5xx, a rate "
            "limit or a connection failure", registry=r)
        self.issues_open = Gauge(
            "iotmeter_relay_issues_open", "Open alert issues in the repository (as of the last "
            "delivery)", registry=r)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
