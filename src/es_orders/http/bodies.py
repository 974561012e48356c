"""Request bodies: how much of one is read, and how its JSON is parsed.

``install_body_rules(app, max_body_bytes)`` gives an app two rules:

- **A limit.** A write whose body is larger than ``max_body_bytes`` is answered 413
  ``payload-too-large``, and the connection closed. A ``Content-Length`` over the limit
  is refused before any of the body is read; a body without one (chunked) is counted as
  it arrives and refused as soon as it passes the limit. Reads (GET, HEAD, OPTIONS) are
  not limited: no route reads their bodies.
- **Strict JSON.** A JSON body is UTF-8 (RFC 8259), holds no ``NaN`` or ``Infinity``
  (Python's parser accepts those tokens; JSON has none) and is nested no deeper than the
  parser can follow. Anything else is malformed JSON: a 422 ``validation-error`` like any
  other, never FastAPI's bare 400.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from es_orders.http.problems import payload_too_large_problem, problem_response

UNLIMITED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class PayloadTooLargeError(HTTPException):
    """Raised from ``receive`` once a body passes the limit. An ``HTTPException``, so that
    FastAPI passes it on while reading a body instead of calling it a parse error."""

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(413)
        self.max_body_bytes = max_body_bytes


def _declared_length(scope: Scope) -> int | None:
    values = Headers(scope=scope).getlist("content-length")
    if len(values) != 1 or not values[0].strip().isdigit():
        return None  # the server refuses a malformed Content-Length; count the body instead
    return int(values[0])


class BodyLimitMiddleware:
    """Refuses a write's body beyond ``max_body_bytes``: declared, before reading it; else
    as soon as the bytes received pass it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in UNLIMITED_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await problem_response(payload_too_large_problem(limit))(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            if received > limit:
                raise PayloadTooLargeError(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(limit)  # answered by _on_payload_too_large
            return message

        await self.app(scope, counting_receive, send)


async def _on_payload_too_large(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, PayloadTooLargeError):  # pragma: no cover - registered for it
        raise exc
    return problem_response(payload_too_large_problem(exc.max_body_bytes))


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON value")


def parse_json(body: bytes) -> Any:
    """The value of a JSON body, or ``json.JSONDecodeError`` saying why there is none."""
    try:
        text = body.decode("utf-8-sig")  # a leading byte order mark is tolerated (RFC 8259)
    except UnicodeDecodeError as exc:
        lossy = body.decode("utf-8", "replace")
        raise json.JSONDecodeError(f"not UTF-8 at byte {exc.start}", lossy, 0) from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except ValueError as exc:  # a refused constant, a number with too many digits
        raise json.JSONDecodeError(str(exc), text, 0) from None


class StrictJSONRequest(Request):
    """A request whose ``json()`` is ``parse_json``: FastAPI turns its error into a 422."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route that reads its JSON body with ``StrictJSONRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handle(StrictJSONRequest(request.scope, request.receive))

        return strict


def install_body_rules(app: FastAPI, max_body_bytes: int) -> None:
    """Give ``app`` the body limit and strict JSON; call before adding any route."""
    if app.router.routes and any(isinstance(r, APIRoute) for r in app.router.routes):
        raise RuntimeError("install_body_rules must come before the app's routes")
    app.router.route_class = StrictJSONRoute
    app.add_exception_handler(PayloadTooLargeError, _on_payload_too_large)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
