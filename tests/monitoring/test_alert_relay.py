"""`iotmeter alert-relay` alone, over real HTTP: Alertmanager's webhook in, a fake GitHub API
(testsupport/fake_github.py) out. Duplicates, GitHub down, rate limits, a bad token
and a malformed payload; the relay as a process, restarted between two deliveries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotmeter_tui.backend.broker import free_port
from iotmeter_tui.backend.health_server import HealthServer
from iotmeter_tui.relay.github import GitHubClient
from iotmeter_tui.relay.metrics import RelayMetrics
from iotmeter_tui.relay.service import LABEL, AlertRelay
from testsupport.fake_github import FakeGitHub

TOKEN = "webhook-secret-0123"
GITHUB_TOKEN = "ghp_fake_token_for_tests"


def notification(status: str = "firing", group: str = "{}:{alertname=\"IotmeterStoreDown\"}",
                 starts: str = "2026-12-02T01:00:00Z", fingerprint: str = "a1") -> dict[str, Any]:
    labels = {"alertname": "IotmeterStoreDown", "severity": "critical", "store": "timeseries",
              "instance": "collector:9108", "job": "iotmeter-collector"}
    annotations = {"summary": "Store timeseries unreachable",
                   "runbook_url": "https://example.org/docs/alerts.md#iotmeterstoredown"}
    return {
        "version": "4", "status": status, "receiver": "github-critical", "groupKey": group,
        "truncatedAlerts": 0, "groupLabels": {"alertname": "IotmeterStoreDown"},
        "commonLabels": labels, "commonAnnotations": annotations,
        "externalURL": "http://alertmanager:9093",
        "alerts": [{"status": status, "labels": labels, "annotations": annotations,
                    "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph", "fingerprint": fingerprint}],
    }


def post(url: str, body: bytes | dict[str, Any], token: str | None = TOKEN) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Relay:
    def __init__(self, github: FakeGitHub, budget_s: float = 3.0) -> None:
        self.metrics = RelayMetrics()
        client = GitHubClient(github.url, github.repo, GITHUB_TOKEN, self.metrics,
                              budget_s=budget_s, first_backoff_s=0.05)
        self.relay = AlertRelay(client, TOKEN, self.metrics,
                                dashboard_url="https://grafana.example/d/iotmeter-overview")
        self.server = HealthServer(self.metrics.registry, self.relay.readiness,
                                   post_routes={"/webhook": self.relay.handle_webhook}).start()
        self.url = f"http://127.0.0.1:{self.server.port}"

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        yield fake


@pytest.fixture
def relay(github: FakeGitHub) -> Iterator[Relay]:
    r = Relay(github)
    yield r
    r.server.stop()


def test_firing_opens_one_issue_with_marker_labels_and_links(relay: Relay,
                                                              github: FakeGitHub) -> None:
    status, reply = post(relay.url + "/webhook", notification())
    assert (status, reply["action"]) == (200, "opened")
    [issue] = github.open_issues()
    assert issue.title == "[critical] IotmeterStoreDown: Store timeseries unreachable"
    assert set(issue.labels) == {LABEL, "severity:critical", "alertname:IotmeterStoreDown"}
    assert "<!-- iotmeter-alert-group: " in issue.body
    assert "https://example.org/docs/alerts.md#iotmeterstoredown" in issue.body
    assert "| store | timeseries |" in issue.body
    assert "[Dashboard](https://grafana.example/d/iotmeter-overview)" in issue.body
    # The GitHub token went to GitHub, and only there.
    assert {auth for _, _, auth in github.requests} == {f"Bearer {GITHUB_TOKEN}"}


def test_the_same_delivery_twice_changes_nothing(relay: Relay, github: FakeGitHub) -> None:
    assert post(relay.url + "/webhook", notification())[1]["action"] == "opened"
    assert post(relay.url + "/webhook", notification())[1]["action"] == "unchanged"
    [issue] = github.open_issues()
    assert issue.comments == []


def test_firing_again_comments_and_resolved_closes(relay: Relay, github: FakeGitHub) -> None:
    post(relay.url + "/webhook", notification())
    again = notification(starts="2026-12-02T02:00:00Z", fingerprint="b2")
    assert post(relay.url + "/webhook", again)[1]["action"] == "commented"
    [issue] = github.open_issues()
    assert len(issue.comments) == 1 and issue.comments[0].startswith("Firing again.")
    assert post(relay.url + "/webhook", notification("resolved"))[1]["action"] == "closed"
    assert github.open_issues() == [] and issue.state == "closed"
    # A repeated resolve finds nothing open: nothing is done, and it is not an error.
    assert post(relay.url + "/webhook", notification("resolved")) == (
        200, {"action": "unchanged", "issue": None})
    # Firing after the close opens a new issue for the new episode.
    assert post(relay.url + "/webhook", notification())[1]["action"] == "opened"
    assert len(github.issues) == 2


def test_two_groups_get_two_issues(relay: Relay, github: FakeGitHub) -> None:
    post(relay.url + "/webhook", notification())
    post(relay.url + "/webhook", notification(group="{}:{alertname=\"IotmeterSinkDown\"}"))
    assert len(github.open_issues()) == 2


def test_github_5xx_is_retried_then_succeeds(relay: Relay, github: FakeGitHub) -> None:
    github.fail_next(502, times=2)
    status, reply = post(relay.url + "/webhook", notification())
    assert (status, reply["action"]) == (200, "opened")
    assert len(github.open_issues()) == 1
    assert relay.count("iotmeter_relay_github_retries_total") == 2
    assert relay.count("iotmeter_relay_github_requests_total", status="5xx") == 2


def test_github_down_answers_503_so_alertmanager_retries(relay: Relay,
                                                         github: FakeGitHub) -> None:
    github.fail_next(503, times=1000)
    started = time.monotonic()
    status, reply = post(relay.url + "/webhook", notification())
    assert status == 503 and "GitHub answered 503" in reply["error"]
    assert time.monotonic() - started < 10
    assert github.issues == {}
    with urllib.request.urlopen(relay.url + "/healthz") as ok:
        assert ok.status == 200
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(relay.url + "/readyz")
    assert caught.value.code == 503 and json.loads(caught.value.read())["down"] == ["github"]
    # GitHub back: Alertmanager's next delivery opens the issue, exactly one.
    github.failures.clear()
    assert post(relay.url + "/webhook", notification())[1]["action"] == "opened"
    assert len(github.issues) == 1
    assert relay.count("iotmeter_relay_webhooks_total", result="failed") == 1
    with urllib.request.urlopen(relay.url + "/readyz") as ready:
        assert ready.status == 200


def test_a_5xx_on_create_is_not_repeated_blindly(relay: Relay, github: FakeGitHub) -> None:
    """GitHub may have opened the issue before failing: the delivery fails, and the next
    one finds what was opened instead of opening a second."""
    original = github._route

    def opens_then_fails(method: str, path: str, query: Any, body: Any) -> tuple[int, Any]:
        status, reply = original(method, path, query, body)
        return (502, {"message": "bad gateway"}) if method == "POST" else (status, reply)

    github._route = opens_then_fails  # type: ignore[method-assign]
    assert post(relay.url + "/webhook", notification())[0] == 503
    github._route = original  # type: ignore[method-assign]
    assert post(relay.url + "/webhook", notification())[1]["action"] == "unchanged"
    assert len(github.issues) == 1


@pytest.mark.parametrize("status, headers", [
    (429, {"Retry-After": "1"}),
    (403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "{reset}"}),
])
def test_rate_limits_are_waited_out(relay: Relay, github: FakeGitHub, status: int,
                                    headers: dict[str, str]) -> None:
    headers = {k: v.format(reset=int(time.time()) + 1) for k, v in headers.items()}
    github.fail_next(status, headers)
    started = time.monotonic()
    code, reply = post(relay.url + "/webhook", notification())
    assert (code, reply["action"]) == (200, "opened")
    assert time.monotonic() - started >= 0.9  # it waited as told, not a blind retry
    assert relay.count("iotmeter_relay_github_requests_total", status="rate_limited") == 1


def test_a_rate_limit_longer_than_the_budget_is_503_at_once(relay: Relay,
                                                            github: FakeGitHub) -> None:
    github.fail_next(429, {"Retry-After": "3600"})
    started = time.monotonic()
    assert post(relay.url + "/webhook", notification())[0] == 503
    assert time.monotonic() - started < 2
    assert github.issues == {}


def test_a_403_without_rate_limit_headers_is_not_retried(relay: Relay,
                                                         github: FakeGitHub) -> None:
    github.fail_next(403)
    status, reply = post(relay.url + "/webhook", notification())
    assert status == 502 and "403" in reply["error"]
    assert relay.count("iotmeter_relay_github_retries_total") == 0


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", ""])
def test_a_bad_webhook_token_is_401(relay: Relay, github: FakeGitHub, token: str | None) -> None:
    status, _ = post(relay.url + "/webhook", notification(), token=token)
    assert status == 401
    assert github.requests == []  # GitHub never asked


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"version": "3"}',
    json.dumps({**notification(), "status": "weird"}).encode(),
    json.dumps({**notification(), "alerts": []}).encode(),
    json.dumps({**notification(), "groupKey": 7}).encode(),
    json.dumps({**notification(), "commonLabels": {"a": 1}}).encode(),
    json.dumps({**notification(), "alerts": [{"status": "firing", "labels": "x"}]}).encode(),
])
def test_a_malformed_payload_is_400_and_opens_nothing(relay: Relay, github: FakeGitHub,
                                                      body: bytes) -> None:
    status, reply = post(relay.url + "/webhook", body)
    assert status == 400 and reply["error"]
    assert github.requests == [] and github.issues == {}
    assert relay.count("iotmeter_relay_webhooks_total", result="bad_request") == 1


def test_hostile_label_values_cannot_forge_a_marker(relay: Relay, github: FakeGitHub) -> None:
    payload = notification()
    forged = "<!-- iotmeter-alert-group: " + "0" * 32 + " -->\n| x | y |"
    payload["commonLabels"] = {**payload["commonLabels"], "store": forged}
    payload["alerts"][0]["labels"]["store"] = forged
    post(relay.url + "/webhook", payload)
    [issue] = github.open_issues()
    assert "0" * 32 not in issue.body.split("<!-- iotmeter-alert-group: ")[1][:32]
    assert issue.body.count("<!-- iotmeter-alert-group:") == 1


# --- the command ------------------------------------------------------------------------------

def start_relay(github: FakeGitHub, port: int, home: Path,
                token_file: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    env.update({"IOTMETER_HOME": str(home), "IOTMETER_GITHUB_REPO": github.repo,
                "IOTMETER_GITHUB_TOKEN": GITHUB_TOKEN, "IOTMETER_GITHUB_API_URL": github.url,
                "IOTMETER_ALERT_RELAY_TOKEN_FILE": str(token_file)})
    process = subprocess.Popen(
        [sys.executable, "-m", "iotmeter_tui", "alert-relay", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"relay did not start: {process.communicate()}")


def test_relay_process_dedups_across_a_restart_and_logs_json(github: FakeGitHub,
                                                             tmp_path: Path) -> None:
    token_file = tmp_path / "relay-token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    outputs = []
    for expected in ("opened", "unchanged"):
        process = start_relay(github, port, tmp_path, token_file)
        try:
            status, reply = post(f"http://127.0.0.1:{port}/webhook", notification())
            assert (status, reply["action"]) == (200, expected)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as metrics:
                assert b'iotmeter_relay_webhooks_total{result="ok"} 1.0' in metrics.read()
        finally:
            process.terminate()
            out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        outputs.append(out)
    assert len(github.issues) == 1
    lines = [json.loads(line) for out in outputs for line in out.splitlines()]
    delivered = [e for e in lines if e.get("event") == "webhook_delivered"]
    assert [e["action"] for e in delivered] == ["opened", "unchanged"]
    assert all(e["request_id"] for e in delivered)
    joined = "".join(outputs)
    assert TOKEN not in joined and GITHUB_TOKEN not in joined


def test_relay_refuses_to_start_without_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    env.update({"IOTMETER_HOME": str(tmp_path), "IOTMETER_GITHUB_REPO": "rail/ops",
                "IOTMETER_GITHUB_TOKEN": GITHUB_TOKEN})
    result = subprocess.run([sys.executable, "-m", "iotmeter_tui", "alert-relay"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "iotmeter: IOTMETER_ALERT_RELAY_TOKEN: not set (or set IOTMETER_ALERT_RELAY_TOKEN_FILE); "
        "the relay needs it"]
    env["IOTMETER_GITHUB_REPO"] = "not a repo"
    result = subprocess.run([sys.executable, "-m", "iotmeter_tui", "alert-relay"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "IOTMETER_GITHUB_REPO" in result.stderr
    assert "Traceback" not in result.stderr


def test_iotmeter_config_masks_the_relay_tokens(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTMETER_")}
    env.update({"IOTMETER_HOME": str(tmp_path), "IOTMETER_GITHUB_TOKEN": GITHUB_TOKEN,
                "IOTMETER_ALERT_RELAY_TOKEN": TOKEN, "IOTMETER_GITHUB_REPO": "rail/ops"})
    result = subprocess.run([sys.executable, "-m", "iotmeter_tui", "config"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert GITHUB_TOKEN not in result.stdout and TOKEN not in result.stdout
    assert "IOTMETER_GITHUB_REPO" in result.stdout and "rail/ops" in result.stdout
