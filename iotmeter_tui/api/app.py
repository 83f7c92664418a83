"""The application factory: the routes, and around every request the API's rules in order:
request id, CORS preflight, authentication and role, rate limit, body cap, then metrics,
audit and CORS headers on the way out. Every error leaves as problem+json."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from flask import Response, g, has_request_context, request
from flask.json.provider import DefaultJSONProvider
from flask_openapi3 import Info, OpenAPI
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from iotmeter_tui.api import routing
from iotmeter_tui.api.auth import Authenticator, AuthFailure
from iotmeter_tui.api.context import ApiContext
from iotmeter_tui.api.metrics import ApiMetrics
from iotmeter_tui.api.problems import (
    ApiProblem,
    FieldError,
    Problem,
    field_name,
    problem_response,
)
from iotmeter_tui.api.ratelimit import RateLimiter, retry_after_header
from iotmeter_tui.backend.apikeys import role_allows
from iotmeter_tui.backend.config import Settings
from iotmeter_tui.backend.errors import (
    AlreadyExists,
    InvalidRequest,
    IotmeterError,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from iotmeter_tui.backend.stores import Stores

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
CORS_MAX_AGE_S = "600"
CORS_HEADERS = "Authorization, Content-Type, X-Request-ID"
# What a created device links to in the document: (link name, path, method).
DEVICE_LINKS = (("GetDevice", "/api/v1/devices/{device_id}", "get"),
                ("UpdateDevice", "/api/v1/devices/{device_id}", "patch"),
                ("DeleteDevice", "/api/v1/devices/{device_id}", "delete"),
                ("GetConfig", "/api/v1/devices/{device_id}/config", "get"),
                ("ReplaceConfig", "/api/v1/devices/{device_id}/config", "put"))
# Query parameters that take several values (`?device=a&device=b`); any other given twice is
# an error rather than silently the first.
REPEATABLE = frozenset({"device"})
PUBLIC_PREFIXES = ("/api/v1/openapi", "/api/v1/docs")


def create_app(settings: Settings, *, stores: Stores | None = None,
               metrics: ApiMetrics | None = None) -> OpenAPI:
    app = OpenAPI(
        __name__,
        info=Info(title="iotmeter device-manager API", version=API_VERSION,
                  description="Devices, telemetry, raw archive, alerts, commands, firmware "
                  "and OTA of a fleet of railway traction power meters. See docs/api.md."),
        security_schemes={"bearer": {"type": "http", "scheme": "bearer",
                                     "description": "an API key (iotmeter apikey create) or a "
                                     "JWT from the configured identity provider"}},
        doc_prefix="/api/v1/docs",
        doc_url="/openapi.json",
        validation_error_status=422,
        validation_error_model=Problem,
        validation_error_callback=_validation_problem,
    )
    # No app-wide cap: each route's cap is set per request in _before (a raw upload reads
    # its own, bounded); a request that matches no route never has its body read.
    app.config["MAX_CONTENT_LENGTH"] = None
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False  # answers keep the models' field order
    context = ApiContext(settings, stores)
    app.extensions["iotmeter"] = context
    app.extensions["iotmeter_metrics"] = metrics or ApiMetrics()
    app.extensions["iotmeter_limiter"] = RateLimiter(settings.api_rate_limit,
                                                     settings.api_rate_burst)
    app.extensions["iotmeter_auth"] = None  # built on first use: it needs the stores

    from iotmeter_tui.api import (
        routes_archive,
        routes_devices,
        routes_ops,
        routes_ota,
        routes_system,
        routes_telemetry,
    )

    for module in (routes_devices, routes_telemetry, routes_archive, routes_ops, routes_ota,
                   routes_system):
        app.register_api(module.bp)
    routes_system.register_plain(app)

    # The OpenAPI document also lives at /api/v1/openapi.json (the contract's path).
    app.add_url_rule("/api/v1/openapi.json", "openapi_json",
                     lambda: Response(orjson.dumps(_document(app)), mimetype="application/json"))

    app.before_request(_before)
    app.after_request(_after)
    app.teardown_request(_teardown)
    app.register_error_handler(ApiProblem, _api_problem)
    app.register_error_handler(HTTPException, _http_problem)
    app.register_error_handler(StoreUnavailable, _store_unavailable)
    app.register_error_handler(NotFound, lambda e: _problem(404, str(e)))
    app.register_error_handler(AlreadyExists, lambda e: _problem(409, str(e)))
    app.register_error_handler(InvalidRequest, lambda e: _problem(422, str(e)))
    app.register_error_handler(Exception, _unexpected)
    _document(app)  # built once, links included, for both document URLs and the docs page
    return app


def _document(app: OpenAPI) -> dict[str, Any]:
    """The generated document plus what the extension cannot declare: links from a created
    device to what can be done with it (clients and schemathesis follow them)."""
    doc: dict[str, Any] = app.api_doc
    paths = doc.get("paths", {})
    created = paths.get("/api/v1/devices", {}).get("post", {}).get("responses", {}).get("201")
    if created is not None and "links" not in created:
        links = {}
        for name, path, verb in DEVICE_LINKS:
            operation = paths.get(path, {}).get(verb)
            if operation and "operationId" in operation:
                links[name] = {"operationId": operation["operationId"],
                               "parameters": {"device_id": "$response.body#/device_id"}}
        created["links"] = links
    return doc


class RequestIdFilter(logging.Filter):
    """Adds the request id to every log line written while a request is answered, so the
    server log, the audit log and the client's X-Request-ID meet."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context() and not hasattr(record, "request_id"):
            record.request_id = g.get("request_id")
        return True


# --- before ---------------------------------------------------------------------------------


def _before() -> Response | None:
    from flask import current_app

    g.started = time.perf_counter()
    offered = request.headers.get("X-Request-ID", "")
    g.request_id = offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
    metrics: ApiMetrics = current_app.extensions["iotmeter_metrics"]
    metrics.in_flight.inc()
    g.in_flight = True
    settings: Settings = current_app.extensions["iotmeter"].settings

    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
        return _preflight(settings)
    rule = request.url_rule
    if rule is None or not request.path.startswith(routing.PREFIX + "/"):
        return None  # 404/405 and the plain endpoints (/healthz, /readyz, /metrics)
    if request.path.startswith(PUBLIC_PREFIXES):
        return None
    # HEAD runs the GET view (Flask drops the body): the same rules apply.
    method = "GET" if request.method == "HEAD" else request.method
    info = routing.ROUTES.get((rule.rule, method))
    if info is None:
        return None  # the OPTIONS Flask answers on its own (Allow), no view runs

    authenticator = current_app.extensions["iotmeter_auth"]
    if authenticator is None:
        context: ApiContext = current_app.extensions["iotmeter"]
        authenticator = Authenticator(
            context.apikeys, jwks_url=settings.api_jwks_url,
            audience=settings.api_jwt_audience, issuer=settings.api_jwt_issuer,
            role_claim=settings.api_jwt_role_claim)
        current_app.extensions["iotmeter_auth"] = authenticator
    try:
        principal = authenticator.authenticate(request.headers.get("Authorization"))
    except AuthFailure as failure:
        metrics.auth_failures.labels(failure.reason).inc()
        # Failed attempts share a bucket per client address: a flood of bad keys costs a
        # lookup each, so it is limited like any key's requests.
        limiter: RateLimiter = current_app.extensions["iotmeter_limiter"]
        wait_s = limiter.take(f"addr:{request.remote_addr}")
        if wait_s > 0:
            metrics.rate_limited.inc()
            raise ApiProblem(429, "too many requests without a valid credential from this "
                             "address", headers={"Retry-After": retry_after_header(wait_s)}
                             ) from None
        raise ApiProblem(401, failure.detail, field="Authorization",
                         headers={"WWW-Authenticate": 'Bearer realm="iotmeter"'}) from None
    g.principal = principal
    g.route_info = info
    if not role_allows(principal.role, info.role):
        metrics.auth_failures.labels("forbidden").inc()
        raise ApiProblem(403, f"this needs the {info.role} role; {principal.name!r} is "
                         f"{principal.role}")

    limiter = current_app.extensions["iotmeter_limiter"]
    wait_s = limiter.take(principal.bucket)
    if wait_s > 0:
        metrics.rate_limited.inc()
        raise ApiProblem(429, f"rate limit of {settings.api_rate_limit:g} requests/s for "
                         f"{principal.name!r} reached", headers={
                             "Retry-After": retry_after_header(wait_s)})

    for name, values in request.args.lists():
        if len(values) > 1 and name not in REPEATABLE:
            raise ApiProblem(422, f"{name}: given {len(values)} times; it takes one value",
                             field=name)

    cap = int(getattr(settings, info.max_body))
    g.body_cap = cap
    length = request.content_length
    if length is not None and length > cap:
        raise ApiProblem(413, f"the body is {length} bytes; at most {cap} are accepted here")
    if length is None and request.mimetype != "application/octet-stream":
        # werkzeug stops a chunked body at the cap without saying so; only a raw stream is
        # read here with a check of its own (routing.read_body), so the rest need a length.
        request.max_content_length = 0
        if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise ApiProblem(411, "send this body with a Content-Length", field="Content-Length")
    else:
        request.max_content_length = None if length is None else cap
    if info.json_body:
        _check_json_body()
    return None


def _check_json_body() -> None:
    if request.mimetype != "application/json":
        raise ApiProblem(415, "the body must be JSON (Content-Type: application/json)",
                         field="Content-Type")
    try:
        request.get_json()  # cached: flask-openapi3 reads the same parse
    except HTTPException:
        raise ApiProblem(400, "the body is not valid JSON", field="body") from None


def _preflight(settings: Settings) -> Response:
    origin = request.headers.get("Origin", "")
    if origin not in (settings.api_cors_origins or ()):
        raise ApiProblem(403, "this origin is not allowed to call the API "
                         "(IOTMETER_API_CORS_ORIGINS)", field="Origin")
    response = Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
    response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
    response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE_S
    return response


# --- after ----------------------------------------------------------------------------------


def _after(response: Response) -> Response:
    from flask import current_app

    context: ApiContext = current_app.extensions["iotmeter"]
    metrics: ApiMetrics = current_app.extensions["iotmeter_metrics"]
    request_id = getattr(g, "request_id", None)
    if request_id:
        response.headers["X-Request-ID"] = request_id
    origin = request.headers.get("Origin")
    if origin and origin in (context.settings.api_cors_origins or ()):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Location, Retry-After, X-Request-ID"
        response.headers.add("Vary", "Origin")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.requests.labels(request.method, route, str(response.status_code)).inc()
    started = getattr(g, "started", None)
    if started is not None:
        metrics.duration.labels(request.method, route).observe(time.perf_counter() - started)
    _audit(context, response.status_code)
    return response


def _audit(context: ApiContext, status: int) -> None:
    principal = getattr(g, "principal", None)
    info = getattr(g, "route_info", None)
    if principal is None or info is None or info.action is None or g.get("audited"):
        return  # a read, an unauthenticated request, or the service recorded it
    target = getattr(g, "audit_target", None)
    if target is None and request.view_args:
        target = next(iter(str(v) for v in request.view_args.values()), None)
    detail = {"status": status}
    if getattr(g, "audit_detail", None):
        detail["note"] = g.audit_detail
    try:
        context.audit.record(principal.name, principal.role, info.action, target,
                             _result(status), request_id=g.request_id, detail=detail)
    except StoreError as exc:
        # The change itself is done (or failed) already; the log line keeps what the table
        # could not.
        log.error("audit record not stored", extra={
            "event": "api_audit_failed", "actor": principal.name, "action": info.action,
            "target": target, "status": status, "request_id": g.request_id, "error": str(exc)})


def _result(status: int) -> str:
    """An HTTP status as one of audit.RESULTS."""
    if status < 400:
        return "ok"
    return {401: "denied", 403: "denied", 404: "not_found", 409: "conflict",
            400: "invalid", 413: "invalid", 415: "invalid", 422: "invalid",
            429: "denied"}.get(status, "failed")


def _teardown(_exc: BaseException | None) -> None:
    from flask import current_app

    if getattr(g, "in_flight", False):
        g.in_flight = False
        current_app.extensions["iotmeter_metrics"].in_flight.dec()


# --- errors ---------------------------------------------------------------------------------


def _problem(status: int, detail: str, **kwargs: Any) -> Response:
    return problem_response(status, detail, instance=request.path,
                            request_id=getattr(g, "request_id", None), **kwargs)


def _api_problem(exc: ApiProblem) -> Response:
    return _problem(exc.status, exc.detail, field=exc.field, errors=exc.errors,
                    headers=exc.headers)


def _http_problem(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status == 413:
        detail = "the body is larger than this endpoint accepts"
    elif status == 405:
        allowed = ", ".join(sorted(m for m in (exc.valid_methods or [])  # type: ignore[attr-defined]
                                   if m not in ("HEAD", "OPTIONS")))
        detail = f"{request.method} is not allowed here" + (f"; use {allowed}" if allowed else "")
    elif status == 404:
        detail = f"no such path {request.path!r}"
    else:
        detail = exc.description or exc.name
    headers = {}
    response = exc.get_response()
    if "Allow" in response.headers:
        headers["Allow"] = response.headers["Allow"]
    if exc.response is not None and exc.response.status_code == 422:
        return exc.response  # type: ignore[return-value]  # flask-openapi3's problem
    return _problem(status, detail, headers=headers)


def _store_unavailable(exc: StoreUnavailable) -> Response:
    return _problem(503, str(exc), headers={"Retry-After": "5"})


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, IotmeterError):
        # A service's refusal that a route did not translate: the message is for people.
        return _problem(422, str(exc))
    log.exception("unexpected error answering %s %s", request.method, request.path)
    return _problem(500, "internal error; the server log has the details (request id "
                    f"{getattr(g, 'request_id', '-')})")


def _validation_problem(exc: ValidationError) -> Response:
    errors = []
    for error in exc.errors(include_url=False):
        errors.append(FieldError(field=field_name(error.get("loc", ())),
                                 message=str(error.get("msg", "invalid"))))
    first = errors[0].field if errors else None
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5]) or "invalid input"
    return problem_response(422, detail, instance=request.path, field=first, errors=errors,
                            request_id=getattr(g, "request_id", None))
