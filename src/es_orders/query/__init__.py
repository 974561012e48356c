"""The query service: interactive queries over the orders an instance materializes."""

from es_orders.query.api import create_query_app

__all__ = ["create_query_app"]
