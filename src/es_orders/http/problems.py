"""RFC 9457 problem details: every error either HTTP service returns is one of these.

The ``type`` member follows one rule. A failure a client may want to branch on has a
URI of its own under ``https://es-orders.dev/problems/`` (``problem_type("order-not-found")``);
a failure that says nothing beyond its status code (an unknown route, a wrong method, a
server bug) is ``about:blank``, and then, as RFC 9457 asks, its ``title`` is the status
phrase. The URIs are identifiers: clients compare them, nothing needs to resolve them.

A service reports an expected failure by raising ``ProblemError``; a domain error is
mapped where the service catches it (``raise ProblemError(409, ...) from exc``), so this
module stays free of any service's exceptions. ``install_problem_handlers`` turns
``ProblemError``, request validation errors, Starlette's ``HTTPException`` and any
unexpected exception into ``application/problem+json``.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
ABOUT_BLANK = "about:blank"
PROBLEM_TYPE_BASE = "https://es-orders.dev/problems/"
VALIDATION_ERROR_TYPE = PROBLEM_TYPE_BASE + "validation-error"

_STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})


def problem_type(slug: str) -> str:
    """The ``type`` URI of a problem clients may branch on, e.g. ``"order-not-found"``."""
    return PROBLEM_TYPE_BASE + slug


def status_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ProblemError(Exception):
    """An expected failure with the problem details the client gets.

    ``extra`` holds extension members (e.g. ``current_version``); they sit beside the
    standard members in the body, so they may not reuse a standard member's name.
    ``headers`` go on the response (e.g. ``Allow``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        type: str = ABOUT_BLANK,  # shadows the builtin to keep the RFC 9457 member name
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        clash = _STANDARD_MEMBERS.intersection(extra or {})
        if clash:
            raise ValueError(f"extension members shadow standard ones: {sorted(clash)}")
        self.status = status
        self.title = title if title is not None else status_phrase(status)
        self.detail = detail
        self.type = type
        self.extra: dict[str, Any] = dict(extra or {})
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(f"{status} {self.title}: {detail}" if detail else f"{status} {self.title}")

    def body(self) -> dict[str, Any]:
        """The JSON object of the problem: standard members first, then extensions."""
        members: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail is not None:
            members["detail"] = self.detail
        members.update(self.extra)
        return members


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_response(problem: ProblemError) -> Response:
    """The ``application/problem+json`` response for ``problem``."""
    return ProblemResponse(
        jsonable_encoder(problem.body()), status_code=problem.status, headers=problem.headers
    )


class ProblemModel(BaseModel):
    """RFC 9457 problem details, as the OpenAPI document shows them."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default=ABOUT_BLANK, examples=[problem_type("order-not-found"), ABOUT_BLANK])
    title: str
    status: int
    detail: str | None = None


class ValidationProblemModel(ProblemModel):
    """A 422 problem: ``errors`` lists what pydantic found wrong, field by field."""

    errors: list[dict[str, Any]]


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting ``statuses`` as problem+json.

    422 is documented with its ``errors`` list; passing it also stops FastAPI from adding
    its own 422 entry, whose body (``{"detail": [...]}``) this service never sends.
    """
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        model = ValidationProblemModel if status == 422 else ProblemModel
        documented[status] = {
            "description": status_phrase(status),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": model.model_json_schema()}},
        }
    return documented


def _describe_validation(errors: Sequence[Any]) -> str:
    described = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        described.append(f"{where}: {error.get('msg', 'invalid')}" if where else error["msg"])
    return "; ".join(described) or "the request is invalid"


async def _on_problem(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ProblemError):  # pragma: no cover - registered for ProblemError
        raise exc
    return problem_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover - registered for it
        raise exc
    errors = exc.errors()
    return problem_response(
        ProblemError(
            422,
            _describe_validation(errors),
            title="Invalid request",
            type=VALIDATION_ERROR_TYPE,
            extra={"errors": jsonable_encoder(errors)},
        )
    )


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for it
        raise exc
    headers = dict(exc.headers or {})
    if exc.status_code in {204, 304} or exc.status_code < 400:
        # Starlette's own handler does the same: these statuses carry no body.
        return Response(status_code=exc.status_code, headers=headers)
    detail: str | None = exc.detail
    if detail == status_phrase(exc.status_code):
        # Starlette's router leaves the phrase as detail; the request says more than that.
        detail = _routing_detail(exc.status_code, request)
    return problem_response(ProblemError(exc.status_code, detail, headers=headers))


def _routing_detail(status: int, request: Request) -> str | None:
    if status == 404:
        return f"no resource at {request.url.path}"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    return None


class _UnexpectedErrorMiddleware:
    """Answers any exception no handler mapped with a 500 problem, logged once with its traceback.

    Starlette's ``Exception`` handler re-raises after responding, so the server logs the
    traceback a second time and test clients raise; catching here, inside that layer,
    keeps one log line per failure and a well-formed response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception(
                "unhandled error method=%s path=%s", scope.get("method"), scope.get("path")
            )
            if started:
                raise  # half a response is out: only the server can close the connection
            response = problem_response(
                ProblemError(500, "an unexpected error occurred; it has been logged")
            )
            await response(scope, receive, send)


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error ``app`` returns an ``application/problem+json`` body.

    Call before the app serves its first request (it adds a middleware).
    """
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_middleware(_UnexpectedErrorMiddleware)
