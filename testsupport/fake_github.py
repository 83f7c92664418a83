"""A fake GitHub issues API over real HTTP, for the alert relay's tests: keeps issues and
comments in memory, and answers the next requests with scripted failures when told to."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class FakeIssue:
    number: int
    title: str
    body: str
    labels: list[str]
    state: str = "open"
    comments: list[str] = field(default_factory=list)


class FakeGitHub:
    def __init__(self, repo: str = "rail/ops") -> None:
        self.repo = repo
        self.issues: dict[int, FakeIssue] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, authorization
        self.failures: list[tuple[int, dict[str, str]]] = []  # answered before real work
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeGitHub:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, status: int, headers: dict[str, str] | None = None, times: int = 1) -> None:
        with self._lock:
            self.failures += [(status, headers or {})] * times

    def open_issues(self) -> list[FakeIssue]:
        return [i for i in self.issues.values() if i.state == "open"]

    def _route(self, method: str, path: str, query: dict[str, list[str]],
               body: dict[str, Any]) -> tuple[int, Any]:
        prefix = f"/repos/{self.repo}/issues"
        if not path.startswith(prefix):
            return 404, {"message": "Not Found"}
        rest = path[len(prefix):].strip("/").split("/")
        if method == "GET" and rest == [""]:
            label = query.get("labels", [""])[0]
            page = int(query.get("page", ["1"])[0])
            per_page = int(query.get("per_page", ["30"])[0])
            found = [i for i in self.issues.values()
                     if i.state == query.get("state", ["open"])[0] and label in i.labels]
            chunk = found[(page - 1) * per_page: page * per_page]
            return 200, [{"number": i.number, "title": i.title, "body": i.body,
                          "labels": [{"name": n} for n in i.labels]} for i in chunk]
        if method == "POST" and rest == [""]:
            number = len(self.issues) + 1
            self.issues[number] = FakeIssue(number, body["title"], body["body"],
                                            list(body.get("labels", [])))
            return 201, {"number": number}
        if not rest[0].isdigit() or int(rest[0]) not in self.issues:
            return 404, {"message": "Not Found"}
        issue = self.issues[int(rest[0])]
        if method == "POST" and rest[1:] == ["comments"]:
            issue.comments.append(body["body"])
            return 201, {"id": len(issue.comments)}
        if method == "PATCH" and len(rest) == 1:
            issue.state = body.get("state", issue.state)
            issue.body = body.get("body", issue.body)
            return 200, {"number": issue.number}
        return 404, {"message": "Not Found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with outer._lock:
                    outer.requests.append((self.command, parts.path,
                                           self.headers.get("Authorization")))
                    if outer.failures:
                        status, headers = outer.failures.pop(0)
                        reply: Any = {"message": "scripted failure"}
                    else:
                        headers = {}
                        status, reply = outer._route(self.command, parts.path,
                                                     parse_qs(parts.query),
                                                     json.loads(raw) if raw else {})
                data = json.dumps(reply).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _serve

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler
