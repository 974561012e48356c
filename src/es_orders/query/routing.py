"""Reads of partitions another instance holds: forwarded to it over HTTP.

A forwarded request carries ``Es-Orders-Forwarded-From``; an instance never forwards
such a request again, so instances whose views of the members disagree for a moment
answer 503 rather than bounce a request between them. Connections to the other
instances are kept alive (one aiohttp session per instance), and every forward is
bounded by a timeout: an owner that is gone or hangs is a 503 with ``Retry-After``.

aiohttp, not httpx (which the project uses elsewhere): measured on one event loop
forwarding 500 reads a second, httpx's connection pool spent ~3.6 ms of CPU per request
checking every pooled connection, so forwarding queued without bound.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from es_orders.kafka.partitioner import partition_for
from es_orders.query.members import Directory, Member
from es_orders.runtime.status import NONE_HELD
from es_orders.runtime.views import Readiness

log = logging.getLogger(__name__)

FORWARDED_FROM = "Es-Orders-Forwarded-From"
SERVED_BY = "Served-By"
# Beyond what the request itself may wait (``wait``): connecting and answering.
FORWARD_TIMEOUT = 2.0
# What a forwarded answer keeps of the owner's headers.
RELAYED_HEADERS = (
    "Content-Type",
    "ETag",
    "Retry-After",
    "Link",
    "Location",
    "Idempotent-Replayed",
    SERVED_BY,
)


class OwnerUnreachableError(Exception):
    def __init__(self, url: str, reason: str, *, sent: bool = True) -> None:
        super().__init__(f"the instance holding it, {url}, did not answer: {reason}")
        self.url = url
        # False: the request never reached it (no connection); True: it may have.
        self.sent = sent


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The owner's answer: status, the headers worth passing on, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def has_next(self) -> bool:
        return 'rel="next"' in self.headers.get("Link", "")


@dataclass
class Cluster:
    """This instance among the others: who it is, who holds what, how to reach them."""

    instance: str
    url: str
    partitions: int
    directory: Directory
    timeout: float = FORWARD_TIMEOUT
    started_at: float = field(default_factory=time.time)
    # Requests forwarded, by (method, outcome): the holder's status code, "no_connection"
    # or "no_answer" (GET /metrics, ``http.metrics.ForwardCollector``).
    forwards: Counter[tuple[str, str]] = field(default_factory=Counter, init=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False)

    def partition_of(self, order_id: str) -> int:
        return partition_for(order_id.encode(), self.partitions)

    def owner(self, partition: int) -> Member | None:
        """Another live instance that holds ``partition``, or None."""
        return self.directory.owner(partition, exclude=self.instance)

    def readiness(self, local: Readiness) -> Readiness:
        """An instance's readiness given its own (``local``): one whose workers hold no
        partition (more instances than partitions) is ready while other instances hold
        every partition."""
        if local.ready or local.waiting_for != (NONE_HELD,):
            return local
        missing = [n for n in range(self.partitions) if self.owner(n) is None]
        if missing:
            return Readiness(False, (f"partitions {missing}: held by no instance",))
        return Readiness(True, (), {})

    def session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the server's event loop, and kept: connections to
        # the other instances stay open between requests.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=30),
                headers={FORWARDED_FROM: self.url},
                # The owner's bytes pass through as they are: no decompression.
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(
        self,
        url: str,
        path: str,
        params: list[tuple[str, str]],
        headers: dict[str, str] | None = None,
        *,
        wait: float = 0.0,
        method: str = "GET",
        body: bytes | None = None,
    ) -> Forwarded:
        """``method`` ``path`` (already quoted) at the instance at ``url``;
        ``OwnerUnreachableError`` if it does not answer in time (what the request itself
        may wait, plus ``timeout``)."""
        timeout = aiohttp.ClientTimeout(total=self.timeout + wait)
        # Sent exactly as built: the id in the path is percent-encoded already, and
        # letting the client requote it could turn "%2F" into a path separator.
        target = URL(url + path + (f"?{urlencode(params)}" if params else ""), encoded=True)
        try:
            async with self.session().request(
                method, target, headers=headers, data=body, timeout=timeout
            ) as response:
                answer = await response.read()
                kept = {k: response.headers[k] for k in RELAYED_HEADERS if k in response.headers}
                self.forwards[(method, str(response.status))] += 1
                return Forwarded(response.status, kept, answer)
        except aiohttp.ClientConnectorError as exc:
            log.debug("forward to %s failed: %r", url, exc)
            self.forwards[(method, "no_connection")] += 1
            raise OwnerUnreachableError(url, type(exc).__name__, sent=False) from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.debug("forward to %s failed: %r", url, exc)
            self.forwards[(method, "no_answer")] += 1
            raise OwnerUnreachableError(url, type(exc).__name__) from exc
