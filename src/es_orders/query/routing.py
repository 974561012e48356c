"""Reads of partitions another instance holds: forwarded to it over HTTP.

A forwarded request carries ``Es-Orders-Forwarded-From``; an instance never forwards
such a request again, so instances whose views of the members disagree for a moment
answer 503 rather than bounce a request between them. Connections to the other
instances are kept alive (one ``httpx.AsyncClient`` per instance), and every forward is
bounded by a timeout: an owner that is gone or hangs is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import httpx

from es_orders.kafka.partitioner import partition_for
from es_orders.query.members import Directory, Member

log = logging.getLogger(__name__)

FORWARDED_FROM = "Es-Orders-Forwarded-From"
SERVED_BY = "Served-By"
# Beyond what the request itself may wait (``wait``): connecting and answering.
FORWARD_TIMEOUT = 2.0
# What a forwarded answer keeps of the owner's headers.
RELAYED_HEADERS = ("content-type", "etag", "retry-after", "link", SERVED_BY.lower())


class OwnerUnreachableError(Exception):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"the instance holding it, {url}, did not answer: {reason}")
        self.url = url


@dataclass
class Cluster:
    """This instance among the others: who it is, who holds what, how to reach them."""

    instance: str
    url: str
    partitions: int
    directory: Directory
    timeout: float = FORWARD_TIMEOUT
    started_at: float = field(default_factory=time.time)
    _client: httpx.AsyncClient | None = field(default=None, init=False)

    def partition_of(self, order_id: str) -> int:
        return partition_for(order_id.encode(), self.partitions)

    def owner(self, partition: int) -> Member | None:
        """Another live instance that holds ``partition``, or None."""
        return self.directory.owner(partition, exclude=self.instance)

    def client(self) -> httpx.AsyncClient:
        # Made on first use, inside the server's event loop, and kept: connections to
        # the other instances stay open between requests.
        if self._client is None:
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                headers={FORWARDED_FROM: self.url},
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def forward(
        self,
        url: str,
        path: str,
        params: list[tuple[str, str]],
        headers: dict[str, str] | None = None,
        *,
        wait: float = 0.0,
    ) -> httpx.Response:
        """GET ``path`` from the instance at ``url``; ``OwnerUnreachableError`` if it does
        not answer in time (what the request itself may wait, plus ``timeout``)."""
        query: list[tuple[str, str | int | float | bool | None]] = list(params)
        try:
            return await self.client().get(
                url + path, params=query, headers=headers, timeout=self.timeout + wait
            )
        except httpx.HTTPError as exc:
            log.debug("forward to %s failed: %r", url, exc)
            raise OwnerUnreachableError(url, type(exc).__name__) from exc
