"""RFC 9457 problem details: the one shape of every error the API returns.

A problem names the field that is wrong when there is one (`field`, and `errors` for several),
never carries a traceback, and is served as application/problem+json."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from flask import Response
from pydantic import BaseModel, Field

PROBLEM_TYPE = "application/problem+json"


class FieldError(BaseModel):
    field: str = Field(description="where: a query parameter, a body member (a.b.0) or a header")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field("about:blank", description="a URI naming the kind of problem")
    title: str = Field(description="the status code's phrase")
    status: int
    detail: str = Field(description="what went wrong, for a person")
    instance: str | None = Field(None, description="the request path")
    field: str | None = Field(None, description="the first field at fault, when one is")
    errors: list[FieldError] | None = None
    request_id: str | None = None


class ApiProblem(Exception):
    """Raised anywhere in a request to answer with a problem."""

    def __init__(self, status: int, detail: str, *, field: str | None = None,
                 errors: list[FieldError] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.errors = errors
        self.headers = headers or {}


def problem_response(status: int, detail: str, *, instance: str | None = None,
                     field: str | None = None, errors: list[FieldError] | None = None,
                     request_id: str | None = None,
                     headers: dict[str, str] | None = None) -> Response:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "detail": detail}
    if instance is not None:
        body["instance"] = instance
    if field is not None:
        body["field"] = field
    if errors:
        body["errors"] = [e.model_dump() for e in errors]
    if request_id is not None:
        body["request_id"] = request_id
    response = Response(orjson.dumps(body), status=status, mimetype=PROBLEM_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic error location as one dotted name: ('body', 'params', 0) -> params.0."""
    return ".".join(str(part) for part in loc) or "body"
