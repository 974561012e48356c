"""The benchmark's own failure: a phase cannot run, or a service it started misbehaves."""

from __future__ import annotations

from es_orders.errors import EsOrdersError


class BenchError(EsOrdersError):
    """A benchmark phase cannot run: a service it started failed, or a wait timed out."""
