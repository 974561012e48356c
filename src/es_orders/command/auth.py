"""``ES_ORDERS_API_TOKEN``: every write needs ``Authorization: Bearer <token>``.

A middleware rather than a route dependency: FastAPI reads and validates the body before
it runs dependencies, so a dependency would tell an unauthenticated client what is wrong
with its JSON before telling it that it may not write at all.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from es_orders.http import ProblemError, problem_response
from es_orders.http.problems import UNAUTHORIZED

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REALM = "es-orders"


def bearer_token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (compared in constant time)."""
    if authorization is None:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


def unauthorized(authorization: str | None) -> ProblemError:
    challenge = f'Bearer realm="{REALM}"'
    if authorization is None:
        detail = "this write needs an Authorization: Bearer <token> header"
    else:
        challenge += ', error="invalid_token"'
        detail = "the bearer token is not valid"
    return UNAUTHORIZED(detail, headers={"WWW-Authenticate": challenge})


class BearerTokenMiddleware:
    """Answers 401 to any request that may change something and lacks the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("an empty API token would let everyone in")
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in READ_METHODS:
            authorization = Headers(scope=scope).get("authorization")
            if not bearer_token_matches(authorization, self.token):
                await problem_response(unauthorized(authorization))(scope, receive, send)
                return
        await self.app(scope, receive, send)
