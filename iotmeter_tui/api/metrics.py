"""The API's Prometheus metrics, names agreed with the observability work (docs/api.md).

With one worker the registry is the process's own. With several gunicorn workers each worker
writes its samples to files in a shared directory (prometheus_client's multiprocess mode,
PROMETHEUS_MULTIPROC_DIR set by `iotmeter api` before any worker starts) and /metrics sums
every worker's, so a scrape that lands on any worker sees the whole server."""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
AUTH_FAILURE_REASONS = ("missing", "invalid", "revoked", "forbidden")


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "iotmeter_api_requests_total", "API requests answered, by route (the URL rule, "
            "never an id) and status.", ["method", "route", "status"], registry=self.registry)
        self.duration = Histogram(
            "iotmeter_api_request_duration_seconds", "Time to answer an API request "
            "(streamed bodies: until the first byte).", ["method", "route"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "iotmeter_api_requests_in_flight", "API requests being answered now.",
            registry=self.registry, multiprocess_mode="livesum")
        self.auth_failures = Counter(
            "iotmeter_api_auth_failures_total", "Requests refused by authentication (401) or "
            "role (403), by reason.", ["reason"], registry=self.registry)
        self.rate_limited = Counter(
            "iotmeter_api_rate_limited_total", "Requests refused with 429 by the per-key "
            "rate limit.", registry=self.registry)
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason)

    def exposition(self) -> bytes:
        """The text /metrics serves: every worker's samples in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
