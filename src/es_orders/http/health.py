"""Liveness and readiness routes, the same on both services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from es_orders.http.problems import not_ready_problem, problem_responses
from es_orders.runtime.views import Readiness


class LiveModel(BaseModel):
    status: Literal["live"] = "live"


class ReadyModel(BaseModel):
    status: Literal["ready"] = "ready"
    partitions: dict[int, str] = Field(
        description="State of each assigned partition, by partition number."
    )


def add_health_routes(
    app: FastAPI,
    readiness: Callable[[], Readiness],
    *,
    ready_summary: str,
) -> None:
    """GET /health/live (200 while the process runs) and GET /health/ready (200, or 503
    ``not-ready`` with ``Retry-After``)."""

    @app.get(
        "/health/live",
        tags=["health"],
        summary="Liveness",
        response_model=LiveModel,
        responses=problem_responses(500),
    )
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
            raise not_ready_problem(current)
        return ReadyModel(partitions=current.partitions)
