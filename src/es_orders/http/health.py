"""Liveness and readiness routes, the same on both services."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from es_orders.http.problems import ProblemError, problem_responses, problem_type
from es_orders.runtime.views import Readiness

NOT_READY_TYPE = problem_type("not-ready")


class LiveModel(BaseModel):
    status: Literal["live"] = "live"


class ReadyModel(BaseModel):
    status: Literal["ready"] = "ready"
    partitions: dict[int, str] = Field(
        description="State of each assigned partition, by partition number."
    )


def not_ready_problem(
    readiness: Readiness, headers: Mapping[str, str] | None = None
) -> ProblemError:
    """The 503 saying what an instance that is not ready waits for."""
    waiting = ", ".join(readiness.waiting_for) or "an unnamed condition"
    return ProblemError(
        503,
        f"waiting for: {waiting}",
        title="Not ready",
        type=NOT_READY_TYPE,
        extra={
            "waiting_for": list(readiness.waiting_for),
            "partitions": {str(p): s for p, s in readiness.partitions.items()},
        },
        headers=headers,
    )


def add_health_routes(
    app: FastAPI,
    readiness: Callable[[], Readiness],
    *,
    ready_summary: str,
    not_ready_headers: Mapping[str, str] | None = None,
) -> None:
    """GET /health/live (200 while the process runs) and GET /health/ready (200 or 503)."""

    @app.get("/health/live", tags=["health"], summary="Liveness", response_model=LiveModel)
    async def live() -> LiveModel:
        return LiveModel()

    @app.get(
        "/health/ready",
        tags=["health"],
        summary=ready_summary,
        response_model=ReadyModel,
        responses=problem_responses(503, 500),
    )
    async def ready() -> ReadyModel:
        current = readiness()
        if not current.ready:
            raise not_ready_problem(current, not_ready_headers)
        return ReadyModel(partitions=current.partitions)
