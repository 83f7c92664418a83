"""A small GitHub REST client for the alert relay: list open issues with a label, open, comment,
edit, close. Retries 5xx, connection failures and rate limits (403/429 with `Retry-After` or
`X-RateLimit-Reset`) with back-off inside a time budget; past it, `GitHubUnavailable`, which the
relay answers with 503 so that Alertmanager delivers again later."""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from iotmeter_tui.backend.errors import IotmeterError
from iotmeter_tui.relay.metrics import RelayMetrics

log = logging.getLogger(__name__)

USER_AGENT: Final = "iotmeter-alert-relay"
TIMEOUT_S: Final = 10.0


class GitHubError(IotmeterError):
    """GitHub refused the request for good (4xx other than a rate limit)."""


class GitHubUnavailable(IotmeterError):
    """GitHub did not answer usefully within the retry budget; worth delivering again later."""


@dataclass(frozen=True, slots=True)
class Issue:
    number: int
    title: str
    body: str


class GitHubClient:
    def __init__(self, api_url: str, repo: str, token: str, metrics: RelayMetrics, *,
                 budget_s: float = 20.0, first_backoff_s: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        parts = urlsplit(api_url.rstrip("/"))
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path
        self.repo = repo
        self._token = token
        self.metrics = metrics
        self.budget_s = budget_s
        self.first_backoff_s = first_backoff_s
        self.sleep = sleep

    # --- the calls the relay makes -------------------------------------------------------

    def open_issues(self, label: str) -> list[Issue]:
        issues: list[Issue] = []
        page = 1
        while True:
            batch = self._call("GET", f"/repos/{self.repo}/issues?state=open&labels={label}"
                               f"&per_page=100&page={page}")
            assert isinstance(batch, list)
            issues += [Issue(int(i["number"]), str(i.get("title") or ""), str(i.get("body") or ""))
                       for i in batch if "pull_request" not in i]
            if len(batch) < 100:
                return issues
            page += 1

    def create_issue(self, title: str, body: str, labels: list[str]) -> int:
        # Not repeated after a 5xx or a lost connection: GitHub may have opened it anyway. The
        # delivery fails instead, and Alertmanager's next one finds the issue by its marker.
        reply = self._call("POST", f"/repos/{self.repo}/issues",
                           {"title": title, "body": body, "labels": labels}, idempotent=False)
        return int(reply["number"])

    def comment(self, number: int, body: str) -> None:
        self._call("POST", f"/repos/{self.repo}/issues/{number}/comments", {"body": body})

    def edit(self, number: int, **fields: Any) -> None:
        self._call("PATCH", f"/repos/{self.repo}/issues/{number}", fields)

    # --- transport, retries ----------------------------------------------------------------

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None, *,
              idempotent: bool = True) -> Any:
        deadline = time.monotonic() + self.budget_s
        backoff = self.first_backoff_s
        body = None if payload is None else json.dumps(payload).encode()
        while True:
            try:
                status, headers, data = self._send(method, path, body)
            except (OSError, http.client.HTTPException) as exc:
                self.metrics.github_requests.labels("error").inc()
                problem, wait = f"cannot reach GitHub: {type(exc).__name__}: {exc}", backoff
            else:
                self.metrics.github_requests.labels(_status_class(status, headers)).inc()
                if 200 <= status < 300:
                    return json.loads(data) if data else {}
                wait_for_limit = _rate_limit_wait(status, headers)
                if wait_for_limit is not None:
                    problem, wait = f"GitHub rate limit ({status})", max(wait_for_limit, 0.0)
                elif status >= 500:
                    problem, wait = f"GitHub answered {status}", backoff
                else:
                    raise GitHubError(f"GitHub refused {method} {path.split('?')[0]}: "
                                      f"{status} {_message(data)}")
            if not idempotent and not problem.startswith("GitHub rate limit"):
                raise GitHubUnavailable(f"{problem}; not repeated (it may have been done)")
            if time.monotonic() + wait > deadline:
                raise GitHubUnavailable(f"{problem}; gave up after {self.budget_s:g} s")
            self.metrics.github_retries.inc()
            log.warning("GitHub call failed; retrying", extra={
                "event": "github_retry", "method": method, "problem": problem,
                "wait_s": round(wait, 2)})
            self.sleep(wait)
            backoff = min(backoff * 2, 30.0)

    def _send(self, method: str, path: str,
              body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        connection: http.client.HTTPConnection
        if self.tls:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=TIMEOUT_S,
                                                     context=ssl.create_default_context())
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        headers = {
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {self._token}",
            "User-Agent": USER_AGENT,
            "X-GitHub-Api-Version": "2022-11-28",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self.prefix + path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            connection.close()


def _rate_limit_wait(status: int, headers: dict[str, str]) -> float | None:
    """Seconds to wait when the answer is a rate limit, else None. A 403 is a rate limit only
    with the headers that say so (otherwise it is a permission problem, not worth retrying)."""
    if status not in (403, 429):
        return None
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        try:
            return float(retry_after)
        except ValueError:
            return None
    if headers.get("x-ratelimit-remaining") == "0" or status == 429:
        try:
            return float(headers["x-ratelimit-reset"]) - time.time() + 1.0
        except (KeyError, ValueError):
            return 60.0 if status == 429 else None
    return None


def _status_class(status: int, headers: dict[str, str]) -> str:
    if _rate_limit_wait(status, headers) is not None:
        return "rate_limited"
    return f"{status // 100}xx"


def _message(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message", ""))[:200]
    except (ValueError, AttributeError):
        return ""
