"""How a route is declared: its path and method for flask-openapi3, and for this API its
minimum role and audit action; plus the helpers every route family uses (the current context
and caller, JSON out through a model, times, cursors)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Response, current_app, g, request
from flask_openapi3 import APIBlueprint
from pydantic import BaseModel

from iotmeter_tui.api.auth import Principal
from iotmeter_tui.api.context import ApiContext
from iotmeter_tui.api.problems import Problem
from iotmeter_tui.backend.audit import Actor
from iotmeter_tui.backend.protocol import MAX_TS_MS

PREFIX = "/api/v1"
SECURITY: list[dict[str, list[Any]]] = [{"bearer": []}]


@dataclass(frozen=True, slots=True)
class RouteInfo:
    role: str  # viewer | operator | admin
    action: str | None  # audit action of a changing route; None for reads
    json_body: bool  # the request carries a JSON body (415 for anything else)
    max_body: str = "api_max_body_bytes"  # the setting that caps this route's body


# (Flask URL rule, method) -> RouteInfo; filled as the route modules are imported.
ROUTES: dict[tuple[str, str], RouteInfo] = {}

ERRORS = {status: {"description": text, "content": {"application/problem+json": {
    "schema": {"$ref": "#/components/schemas/Problem"}}}}
    for status, text in ((400, "Bad request"), (401, "No, a bad or a revoked key"),
                         (403, "Role too low"), (404, "Not found"), (409, "Conflict"),
                         (411, "Length required"), (413, "Body too large"),
                         (415, "Not JSON"), (422, "Invalid input"), (429, "Rate limited"),
                         (503, "A store is unavailable; try again"))}


def api_route(bp: APIBlueprint, method: str, rule: str, *, role: str,
              action: str | None = None, json_body: bool = False,
              max_body: str = "api_max_body_bytes", responses: dict[Any, Any] | None = None,
              **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    assert rule.startswith("/")
    flask_rule = re.sub(r"\{(\w+)\}", r"<\1>", PREFIX + rule)
    ROUTES[(flask_rule, method.upper())] = RouteInfo(role, action, json_body, max_body)
    declared: dict[Any, Any] = dict(ERRORS)
    declared.update(responses or {})
    register = getattr(bp, method.lower())
    return register(re.sub(r"\{(\w+)\}", r"<\1>", rule), responses=declared, security=SECURITY,
                    **kwargs)


def ctx() -> ApiContext:
    context: ApiContext = current_app.extensions["iotmeter"]
    return context


def caller() -> Principal:
    principal: Principal = g.principal
    return principal


def actor() -> Actor:
    """The caller as the services' audit actor. A route that passes it on leaves the audit
    entry to the service (which records the outcome with its detail), so the request is not
    recorded twice."""
    g.audited = True
    principal = caller()
    return Actor(principal.name, principal.role, g.request_id)


def out(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(model.model_dump_json(), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def note_target(target: str | None, detail: str | None = None) -> None:
    """What the audit log records as this request's target (and a detail) when the path alone
    does not say it (a created device, a started campaign)."""
    g.audit_target = target
    if detail is not None:
        g.audit_detail = detail


def read_body() -> bytes:
    """A raw body, at most the route's cap: 413 past it, also for a chunked upload that
    announced no length (never a silently shortened body)."""
    from iotmeter_tui.api.problems import ApiProblem

    cap: int = g.body_cap
    data = request.stream.read(cap + 1)
    if len(data) > cap:
        raise ApiProblem(413, f"the body is larger than the {cap} bytes accepted here")
    return data


# --- times ----------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d{1,9})(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_time(field: str, text: str | None, default: int) -> int:
    """ms since the epoch from ms digits or ISO-8601 (naive means UTC)."""
    from iotmeter_tui.api.problems import ApiProblem

    if text is None or text == "":
        return default
    if re.fullmatch(r"\d{1,16}", text):
        value = int(text)
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ApiProblem(422, f"{field}: {text!r} is neither ms since the epoch nor an "
                             "ISO-8601 time", field=field) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        value = int(when.timestamp() * 1000)
    if not 0 <= value <= MAX_TS_MS:
        raise ApiProblem(422, f"{field}: {text!r} is out of range", field=field)
    return value


def parse_duration(field: str, text: str) -> int:
    from iotmeter_tui.api.problems import ApiProblem

    match = _DURATION.fullmatch(text)
    if match is None or int(match.group(1)) == 0:
        raise ApiProblem(422, f"{field}: {text!r} is not a duration like 500ms, 10s, 1m, 1h, 1d",
                         field=field)
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


# --- cursors --------------------------------------------------------------------------------
# Opaque to clients: the offset of the next page, so a cursor cannot be forged into anything
# but another page. (Pages are read newest-first or in a stable sort; an item added meanwhile
# may shift one page by one, never skip the rest.)


def encode_cursor(offset: int, kind: str = "o") -> str:
    """`kind` o: an offset; b: an id to page back from (the audit log)."""
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: str = "o") -> int:
    from iotmeter_tui.api.problems import ApiProblem

    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, _, number = text.partition(":")
        if found == kind and number.isdigit() and len(number) <= 19:
            return int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ApiProblem(422, "cursor: not a cursor this API gave out", field="cursor")


def page_of(items: list[Any], offset: int, limit: int) -> tuple[list[Any], str | None]:
    """Items fetched from `offset` with one extra: the page and the next cursor."""
    page = items[:limit]
    return page, (encode_cursor(offset + limit) if len(items) > limit else None)


__all__ = ["PREFIX", "ROUTES", "Problem", "RouteInfo", "actor", "api_route", "caller", "ctx",
           "decode_cursor", "encode_cursor", "note_target", "out", "page_of", "parse_duration",
           "parse_time"]
