"""What both services' OpenAPI documents share: the order state, and exact numbers.

**The order state.** Its one definition is ``domain.OrderState``, which the codec writes
and reads as declared; its JSON Schema (``codec.state_json_schema``) is what both
services publish, as the component ``OrderState``. Routes refer to it through
``order_state_content`` and ``order_states_content``.

**Exact numbers.** FastAPI's OpenAPI model holds every numeric bound as a float, so
``le=2**63 - 1`` would be published as ``9.223372036854776e+18``: a float, and one
above the real bound, which a client would find refused. ``install_openapi`` publishes
each bound as the integer it was declared as.

**Only answers that are sent.** FastAPI documents a 422 ``{"detail": [...]}`` on every
route with parameters unless the route documents its own; no route answers that (a 422
is a ``validation-error`` problem, documented where it can happen), so it is dropped.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from es_orders.codec import state_json_schema
from es_orders.domain.events import MAX_INT

JSON_MEDIA_TYPE = "application/json"
_REF_TEMPLATE = "#/components/schemas/{name}"
ORDER_STATE_SCHEMA, _STATE_COMPONENTS = state_json_schema(_REF_TEMPLATE)

_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
# Floats hold every integer up to 2**53 exactly; a bound beyond that is one of these.
_LARGE_INTEGERS = {float(n): n for n in (MAX_INT, -MAX_INT - 1)}
_EXACT_FLOAT_INTEGERS = 2**53


def order_state_content() -> dict[str, Any]:
    """The ``content`` of a response that is one order state."""
    return {JSON_MEDIA_TYPE: {"schema": dict(ORDER_STATE_SCHEMA)}}


def order_states_content() -> dict[str, Any]:
    """The ``content`` of a response that is a JSON array of order states."""
    return {JSON_MEDIA_TYPE: {"schema": {"type": "array", "items": dict(ORDER_STATE_SCHEMA)}}}


def _as_integer(value: float, where: str) -> int | float:
    if not value.is_integer():
        return value
    if abs(value) < _EXACT_FLOAT_INTEGERS:
        return int(value)
    if value in _LARGE_INTEGERS:
        return _LARGE_INTEGERS[value]
    raise ValueError(f"the bound {value!r} at {where} cannot be published exactly")


def _exact_integers(node: Any, where: str = "#") -> Any:
    if isinstance(node, dict):
        return {
            key: (
                _as_integer(value, f"{where}/{key}")
                if key in _BOUNDS and isinstance(value, float)
                else _exact_integers(value, f"{where}/{key}")
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_exact_integers(value, f"{where}/{n}") for n, value in enumerate(node)]
    return node


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def _drop_fastapi_422(document: dict[str, Any]) -> None:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            content = responses.get("422", {}).get("content", {})
            if content.get(JSON_MEDIA_TYPE, {}).get("schema", {}).get("$ref") == _FASTAPI_422:
                del responses["422"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def install_openapi(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI document hold the order state's schema and exact integer bounds."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document: dict[str, Any] = _exact_integers(generate())
            _drop_fastapi_422(document)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(_STATE_COMPONENTS)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
