"""Commands sent over HTTP to the command instance holding their order: the simulator's
way to the orders of partitions another instance holds (HTTP clients are forwarded by
the API itself, ``command.api``)."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from es_orders.command.errors import PartitionUnavailableError
from es_orders.domain import (
    CancelOrder,
    ChangePrice,
    ChangeProduct,
    ChangeQuantity,
    Command,
    CreateOrder,
)
from es_orders.kafka.partitioner import partition_for
from es_orders.query.routing import FORWARDED_FROM, Cluster

log = logging.getLogger(__name__)

_TIMEOUT = 10.0


def command_request(command: Command) -> tuple[str, dict[str, Any], int | None]:
    """The API request for ``command``: path, JSON body and expected version."""
    match command:
        case CreateOrder():
            body = {
                "id": command.order_id,
                "user_id": command.user_id,
                "product_id": command.product_id,
                "quantity": command.quantity,
                "price": command.price,
            }
            return "/orders", body, None
        case ChangePrice():
            path, body = "price", {"price": command.price}
        case ChangeQuantity():
            path, body = "quantity", {"quantity": command.quantity}
        case ChangeProduct():
            path, body = "product", {"product_id": command.product_id}
        case CancelOrder():
            path, body = "cancel", {"reason": command.reason}
    return f"/orders/{command.order_id}/{path}", body, command.expected_version


class RemoteCommands:
    """Sends a command to the live instance holding its order's partition."""

    def __init__(self, cluster: Cluster, api_token: str | None) -> None:
        self._cluster = cluster
        headers = {FORWARDED_FROM: cluster.url}
        if api_token:
            headers["Authorization"] = f"Bearer {api_token}"
        self._client = httpx.Client(timeout=_TIMEOUT, headers=headers)

    def send(self, command: Command) -> httpx.Response:
        """The holder's answer; ``PartitionUnavailableError`` when no live instance holds
        the order's partition, or the one that does cannot be reached."""
        partition = partition_for(command.order_id.encode(), self._cluster.partitions)
        owner = self._cluster.owner(partition)
        if owner is None:
            raise PartitionUnavailableError(partition)
        path, body, expected = command_request(command)
        headers = {"If-Match": f'"{expected}"'} if expected is not None else {}
        try:
            return self._client.post(owner.record.url + path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            log.debug("command to %s failed: %r", owner.record.url, exc)
            raise PartitionUnavailableError(partition) from exc

    def close(self) -> None:
        self._client.close()
