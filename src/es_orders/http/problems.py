"""RFC 9457 problem details: every error either HTTP service returns is one of these.

The ``type`` member follows one rule. A failure a client may want to branch on has a
URI of its own under ``https://es-orders.dev/problems/``: the catalogue below lists every
one, with its status and title (``ORDER_NOT_FOUND``, ``VERSION_CONFLICT``, ...). A failure
that says nothing beyond its status code (an unknown route, a wrong method, a server bug)
is ``about:blank``, and then, as RFC 9457 asks, its ``title`` is the status phrase. The
URIs are identifiers: clients compare them, nothing needs to resolve them.

This module is the one home of problem bodies. Problems whose shape both services share
have a builder here (``validation_problem``, ``not_ready_problem``,
``order_not_found_problem``, ``payload_too_large_problem``); a service maps only its own
exceptions to catalogue entries, where it catches them (``raise ORDER_EXISTS(...) from
exc``), so this module stays free of any service's exceptions. ``install_problem_handlers``
turns ``ProblemError``, request validation errors, Starlette's ``HTTPException`` and any
unexpected exception into ``application/problem+json``.

A problem may quote what the client sent (a value, a member name, an id), never more
than a short prefix of it (``echo``): an error answer stays small whatever the request.
"""

from __future__ import annotations

import http
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from es_orders.domain.events import MAX_ID_LENGTH
from es_orders.runtime.views import Readiness

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
ABOUT_BLANK = "about:blank"
PROBLEM_TYPE_BASE = "https://es-orders.dev/problems/"
ECHO_LIMIT = 100  # characters of a client's input a problem quotes
ELLIPSIS = "…"  # ends a quote that was cut
MAX_ERRORS = 20  # items of a 422's errors list; the detail counts the rest

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


@dataclass(frozen=True, slots=True)
class ProblemKind:
    """An entry of the catalogue: a failure clients may branch on, with its status and title.

    Calling it builds the problem: ``ORDER_EXISTS(detail, extra=..., headers=...)``.
    """

    slug: str
    status: int
    title: str

    @property
    def type(self) -> str:
        return problem_type(self.slug)

    def __call__(
        self,
        detail: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ProblemError:
        return ProblemError(
            self.status, detail, title=self.title, type=self.type, extra=extra, headers=headers
        )


# The catalogue: every problem type either service answers with (README, "Command service").
UNAUTHORIZED = ProblemKind("unauthorized", 401, "Unauthorized")
ORDER_NOT_FOUND = ProblemKind("order-not-found", 404, "Order not found")
ORDER_EXISTS = ProblemKind("order-exists", 409, "Order already exists")
ORDER_CANCELLED = ProblemKind("order-cancelled", 409, "Order is cancelled")
VERSION_CONFLICT = ProblemKind("version-conflict", 412, "Version conflict")
PAYLOAD_TOO_LARGE = ProblemKind("payload-too-large", 413, "Payload too large")
VALIDATION_ERROR = ProblemKind("validation-error", 422, "Invalid request")
IDEMPOTENCY_KEY_REUSED = ProblemKind(
    "idempotency-key-reused", 422, "Idempotency-Key used for another request"
)
NOT_READY = ProblemKind("not-ready", 503, "Not ready")
PARTITION_UNAVAILABLE = ProblemKind("partition-unavailable", 503, "Partition unavailable")
WRITE_NOT_ACKNOWLEDGED = ProblemKind("write-not-acknowledged", 503, "Write not acknowledged")
COMMAND_TIMEOUT = ProblemKind("command-timeout", 503, "Command timed out")
ORDER_IN_DOUBT = ProblemKind("order-in-doubt", 503, "Order in doubt")
ORDER_CONTENDED = ProblemKind("order-contended", 503, "Order contended")
VERSION_NOT_VISIBLE = ProblemKind("version-not-visible", 503, "Version not visible yet")
HISTORY_OFF = ProblemKind("history-off", 501, "History not kept")
HISTORY_REBUILDING = ProblemKind("history-rebuilding", 503, "History being rebuilt")
CHANGES_UNAVAILABLE = ProblemKind("changes-unavailable", 503, "Live changes unavailable")
CATALOGUE = (
    UNAUTHORIZED,
    ORDER_NOT_FOUND,
    ORDER_EXISTS,
    ORDER_CANCELLED,
    VERSION_CONFLICT,
    PAYLOAD_TOO_LARGE,
    VALIDATION_ERROR,
    IDEMPOTENCY_KEY_REUSED,
    NOT_READY,
    PARTITION_UNAVAILABLE,
    WRITE_NOT_ACKNOWLEDGED,
    COMMAND_TIMEOUT,
    ORDER_IN_DOUBT,
    ORDER_CONTENDED,
    VERSION_NOT_VISIBLE,
    HISTORY_OFF,
    HISTORY_REBUILDING,
    CHANGES_UNAVAILABLE,
)


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text``, or its first ``limit`` characters and an ellipsis if it is longer."""
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _finite(value: Any) -> Any:
    """``value`` with every float JSON cannot hold (NaN, infinities) as its token's text."""
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE.get(value, "NaN")
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def echo(value: Any) -> Any:
    """A client's input as a problem may quote it: valid JSON, at most ``ECHO_LIMIT``
    characters of it. A longer string, or a value whose JSON is longer, becomes a string
    of its first characters ending in an ellipsis; no more than that is read of it."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value[: ECHO_LIMIT * 4]).decode("utf-8", "replace")
    if isinstance(value, str):
        return clip(value)
    if value is None or isinstance(value, bool | float):
        return _finite(value)
    if isinstance(value, int):
        try:
            digits = str(value)
        except ValueError:  # beyond int-to-str's digit limit
            return "an integer too long to quote"
        return value if len(digits) <= ECHO_LIMIT else clip(digits)
    # Encoded lazily, so a huge or deeply nested value costs only the prefix quoted.
    encoder = json.JSONEncoder(ensure_ascii=False, default=repr, check_circular=False)
    text = ""
    for chunk in encoder.iterencode(value):
        text += chunk
        if len(text) > ECHO_LIMIT:
            return clip(text)
    return _finite(value)


@dataclass(frozen=True, slots=True)
class InvalidInput:
    """One thing wrong with a request, for ``validation_problem``."""

    loc: Sequence[str | int]  # where: ("body", "price"), ("header", "If-Match"), ...
    msg: str
    input: Any
    type: str = "value_error"


def _error_item(error: InvalidInput | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(error, InvalidInput):
        loc, msg, kind, given = error.loc, error.msg, error.type, error.input
    else:  # as pydantic and FastAPI report them
        loc, msg = error.get("loc", ()), str(error.get("msg", "invalid"))
        kind, given = str(error.get("type", "value_error")), error.get("input")
        context = error.get("ctx") or {}
        if kind == "json_invalid" and "error" in context:
            msg = f"{msg}: {clip(str(context['error']))}"
    return {
        "loc": [part if isinstance(part, int) else clip(str(part)) for part in loc],
        "msg": msg,
        "type": kind,
        "input": echo(given),
    }


def validation_problem(errors: Sequence[InvalidInput | Mapping[str, Any]]) -> ProblemError:
    """The one 422: ``errors`` lists ``loc``, ``msg``, ``type`` and ``input`` (quoted) of each
    thing wrong, the first ``MAX_ERRORS`` of them; ``detail`` sums them up."""
    items = [_error_item(error) for error in errors[:MAX_ERRORS]]
    described = [f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in items]
    if len(errors) > MAX_ERRORS:
        described.append(f"and {len(errors) - MAX_ERRORS} more")
    return VALIDATION_ERROR(
        "; ".join(described) or "the request is invalid", extra={"errors": items}
    )


def not_ready_problem(readiness: Readiness, retry_after: int = 1) -> ProblemError:
    """The 503 of an instance that is not ready: what it waits for, its partitions, and
    ``Retry-After``. The same on every route of both services."""
    waiting = ", ".join(readiness.waiting_for) or "an unnamed condition"
    return NOT_READY(
        f"waiting for: {waiting}",
        extra={
            "waiting_for": list(readiness.waiting_for),
            "partitions": {str(p): s for p, s in readiness.partitions.items()},
        },
        headers={"Retry-After": str(retry_after)},
    )


def partition_unavailable_problem(partition: int | None, retry_after: int = 1) -> ProblemError:
    """The 503 of a read this instance cannot answer now: the partition that holds the key
    (``None``: any partition) is not held here (revoked, lost with the group, moving).
    Never a 404, which would claim that an existing order does not exist."""
    if partition is None:
        detail = "this instance holds no partition of the orders now; retry shortly"
    else:
        detail = f"partition {partition} of the orders is not held by this instance now"
        detail += "; retry shortly"
    return PARTITION_UNAVAILABLE(
        detail, extra={"partition": partition}, headers={"Retry-After": str(retry_after)}
    )


def version_not_visible_problem(
    order_id: str, min_version: int, current_version: int, retry_after: int = 1
) -> ProblemError:
    """The 503 of a read that asked for ``min_version`` (``?min_version=``) and waited
    for it in vain: the version the instance has (0: it has no such order yet)."""
    quoted = clip(order_id, MAX_ID_LENGTH)
    return VERSION_NOT_VISIBLE(
        f'order "{quoted}" is at version {current_version} here, not yet at {min_version}; '
        "retry shortly",
        extra={"order_id": quoted, "min_version": min_version, "current_version": current_version},
        headers={"Retry-After": str(retry_after)},
    )


def order_not_found_problem(order_id: str) -> ProblemError:
    """The 404 of an unknown order, the same on both services; any id that can exist is
    quoted whole."""
    quoted = clip(order_id, MAX_ID_LENGTH)
    return ORDER_NOT_FOUND(f'no order with id "{quoted}"', extra={"order_id": quoted})


def history_rebuilding_problem(partition: int, retry_after: int = 5) -> ProblemError:
    """The 503 of a history request while the partition's history is rebuilt from the
    events topic (after a restore from the changelog); its latest states are served."""
    return HISTORY_REBUILDING(
        f"the history of partition {partition} is being rebuilt from the events topic; "
        "the latest state is served meanwhile; retry later",
        extra={"partition": partition},
        headers={"Retry-After": str(retry_after)},
    )


def history_off_problem() -> ProblemError:
    """The 501 of a history request to a service that keeps none."""
    return HISTORY_OFF("this query service keeps no history of the orders (ES_ORDERS_HISTORY=off)")


def payload_too_large_problem(max_body_bytes: int) -> ProblemError:
    """The 413 of a request body beyond the limit; the connection is closed after it."""
    return PAYLOAD_TOO_LARGE(
        f"the request body is larger than {max_body_bytes} bytes",
        extra={"max_body_bytes": max_body_bytes},
        headers={"Connection": "close"},
    )


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


class ValidationErrorModel(BaseModel):
    """One thing wrong with a request."""

    loc: list[str | int] = Field(
        description='Where: `["body", "price"]`, `["path", "order_id"]`, `["header", "If-Match"]`.'
    )
    msg: str
    type: str = Field(examples=["greater_than_equal", "json_invalid", "value_error"])
    input: Any = Field(
        description="The value found there, as sent; a long one is cut to its first "
        f"{ECHO_LIMIT} characters and `{ELLIPSIS}`."
    )


class ValidationProblemModel(ProblemModel):
    """A 422 problem (``validation-error``): ``errors`` lists what is wrong, field by field."""

    errors: list[ValidationErrorModel] = Field(max_length=MAX_ERRORS)


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` written out where they are referred to.

    An OpenAPI document resolves ``#/$defs/...`` from its own root, where there are none.
    """
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_PROBLEM_SCHEMAS = {
    "problem": _inline(ProblemModel.model_json_schema()),
    "validation": _inline(ValidationProblemModel.model_json_schema()),
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting ``statuses`` as problem+json.

    422 is documented with its ``errors`` list; passing it also stops FastAPI from adding
    its own 422 entry, whose body (``{"detail": [...]}``) this service never sends.
    """
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        schema = _PROBLEM_SCHEMAS["validation" if status == 422 else "problem"]
        kinds = [f"`{kind.slug}`" for kind in CATALOGUE if kind.status == status]
        documented[status] = {
            "description": status_phrase(status) + (f": {' / '.join(kinds)}" if kinds else ""),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
        }
    return documented


async def _on_problem(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ProblemError):  # pragma: no cover - registered for ProblemError
        raise exc
    return problem_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover - registered for it
        raise exc
    return problem_response(validation_problem(exc.errors()))


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
        return f"no resource at {clip(request.url.path)}"
    if status == 405:
        return f"{request.method} is not allowed on {clip(request.url.path)}"
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
