"""What the query API answers with, for any order of the cluster: read from this
instance's stores when it holds the order's partition, else from the instance that does.

Reads of one order are routed by the partition murmur2 gives its id (as the producers
place it). A partition held here (restoring or not) is answered here; one held by another
instance is forwarded there (``routing``); one held by nobody known is a 503 with
``Retry-After``, never a 404, which would say that an existing order does not exist.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote

import msgspec
from fastapi import Response

from es_orders.codec import encode_state, format_instant, state_version
from es_orders.http.openapi import JSON_MEDIA_TYPE
from es_orders.http.problems import (
    ProblemError,
    history_off_problem,
    history_rebuilding_problem,
    order_not_found_problem,
    partition_unavailable_problem,
    version_not_visible_problem,
)
from es_orders.query.members import MemberPartition, MemberRecord
from es_orders.query.models import ClusterModel, ClusterPartitionModel, MemberModel
from es_orders.query.routing import (
    FORWARDED_FROM,
    SERVED_BY,
    Cluster,
    Forwarded,
    OwnerUnreachableError,
)
from es_orders.runtime.history import HistoryOffError, HistoryRebuildingError, state_of
from es_orders.runtime.views import EventRow, OrderView, PartitionNotHeldError, Readiness

Rows = list[tuple[str, bytes]]
# While waiting for a version (``min_version``): the first look again after 2 ms, then
# twice as long each time up to 20 ms. A look is one SQLite read.
_FIRST_PAUSE, _MAX_PAUSE = 0.002, 0.02


class _Identified(msgspec.Struct):
    id: str


_id_decoder = msgspec.json.Decoder(_Identified)
_page_decoder = msgspec.json.Decoder(list[msgspec.Raw])


def etag_of(version: int) -> str:
    return f'"{version}"'


def matches_any(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag``, compared weakly as RFC 9110 asks for GET."""
    candidates = (tag.strip() for tag in if_none_match.split(","))
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in candidates)


def unavailable(partition: int | None, why: str | None = None) -> ProblemError:
    problem = partition_unavailable_problem(partition)
    if why is not None:
        problem.detail = f"{problem.detail} ({why})"
    return problem


def _relayed(answer: Forwarded) -> Response:
    """The owner's answer as this instance's: status, body and the headers that matter."""
    return Response(content=answer.body, status_code=answer.status, headers=answer.headers)


def describe_self(view: OrderView) -> tuple[bool, tuple[str, ...], tuple[MemberPartition, ...]]:
    """What this instance writes to the members topic: readiness and partitions held."""
    partitions = tuple(
        MemberPartition(
            p.number, p.phase, p.consumed, p.end, p.history, p.history_rebuilt, p.history_target
        )
        for p in view.held()
    )
    readiness = view.readiness()
    return readiness.ready, readiness.waiting_for, partitions


class ClusterReads:
    def __init__(self, view: OrderView, cluster: Cluster) -> None:
        self._view = view
        self._cluster = cluster
        self.served_by = {SERVED_BY: cluster.url}

    # -- one order -------------------------------------------------------------------

    async def order(
        self,
        order_id: str,
        *,
        if_none_match: str | None,
        min_version: int | None,
        wait: float,
        forwarded: bool,
    ) -> Response:
        """The order's state as its holder answers it; with ``min_version``, once the
        state has reached it, looking again until ``wait`` seconds have passed. Every
        answer, a problem too, names the instance that gave it in ``Served-By``."""
        try:
            return await self._order(order_id, if_none_match, min_version, wait, forwarded)
        except ProblemError as problem:
            problem.headers.setdefault(SERVED_BY, self._cluster.url)
            raise

    async def _order(
        self,
        order_id: str,
        if_none_match: str | None,
        min_version: int | None,
        wait: float,
        forwarded: bool,
    ) -> Response:
        cluster = self._cluster
        number = cluster.partition_of(order_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (wait if min_version is not None else 0.0)
        pause = _FIRST_PAUSE
        while True:
            problem: ProblemError
            if self._view.holds(number):
                try:
                    state = self._view.get(order_id)
                except PartitionNotHeldError as exc:
                    problem = unavailable(exc.partition)
                else:
                    have = 0 if state is None else state_version(state)
                    if min_version is None or have >= min_version:
                        return self._answer(order_id, state, if_none_match)
                    problem = version_not_visible_problem(order_id, min_version, have)
            elif forwarded:
                # Sent here by an instance that believed we hold it: never a second hop.
                raise unavailable(number, "forwarded here, but not held here")
            else:
                owner = cluster.owner(number)
                if owner is None:
                    problem = unavailable(number, "no instance holds it now")
                else:
                    left = max(0.0, deadline - loop.time())
                    params = []
                    if min_version is not None:  # the owner waits for what is left
                        params = [("min_version", str(min_version)), ("wait", f"{left:.3f}")]
                    headers = {} if if_none_match is None else {"If-None-Match": if_none_match}
                    path = f"/orders/{quote(order_id, safe='')}"
                    try:
                        response = await cluster.forward(
                            owner.record.url, path, params, headers, wait=left
                        )
                    except OwnerUnreachableError as exc:
                        problem = unavailable(number, str(exc))
                    else:
                        return _relayed(response)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise problem
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _MAX_PAUSE)

    def _answer(self, order_id: str, state: bytes | None, if_none_match: str | None) -> Response:
        if state is None:
            raise order_not_found_problem(order_id)
        etag = etag_of(state_version(state))
        headers = {"ETag": etag, **self.served_by}
        if if_none_match is not None and matches_any(if_none_match, etag):
            return Response(status_code=304, headers=headers)
        return Response(content=state, media_type=JSON_MEDIA_TYPE, headers=headers)

    # -- history ---------------------------------------------------------------------

    async def events(
        self, order_id: str, *, after_version: int, limit: int, root: str, forwarded: bool
    ) -> Response:
        """A page of the order's events, from the instance that holds it."""

        def here() -> Response:
            found = self._view.events(order_id, after_version, limit + 1)
            if found is None:
                raise order_not_found_problem(order_id)
            number, rows = found
            body = b"[" + b",".join(_event_item(number, row) for row in rows[:limit]) + b"]"
            headers = dict(self.served_by)
            if len(rows) > limit:
                path = f"{root}/orders/{quote(order_id, safe='')}/events"
                query = f"limit={limit}&after_version={rows[limit - 1][0]}"
                headers["Link"] = f'<{path}?{query}>; rel="next"'
            return Response(content=body, media_type=JSON_MEDIA_TYPE, headers=headers)

        params = [("limit", str(limit)), ("after_version", str(after_version))]
        path = f"/orders/{quote(order_id, safe='')}/events"
        return await self._routed(order_id, here, path, params, forwarded)

    async def order_at(
        self,
        order_id: str,
        *,
        version: int | None,
        as_of: datetime | None,
        if_none_match: str | None,
        forwarded: bool,
    ) -> Response:
        """The order's state at ``version``, or as of the instant ``as_of``: its events
        up to there, folded."""

        def here() -> Response:
            timestamp = None if as_of is None else int(as_of.timestamp() * 1000)
            events = self._view.events_until(order_id, version=version, timestamp=timestamp)
            if events is None:
                raise order_not_found_problem(order_id)
            state = state_of(events)
            if state is None:
                when = f"at version {version}" if version is not None else f"as of {as_of}"
                problem = order_not_found_problem(order_id)
                problem.detail = f"{problem.detail} {when}: it was created later"
                raise problem
            return self._answer(order_id, encode_state(state), if_none_match)

        params = [("version", str(version))] if version is not None else []
        if as_of is not None:
            params.append(("as_of", format_instant(as_of)))
        headers = {} if if_none_match is None else {"If-None-Match": if_none_match}
        path = f"/orders/{quote(order_id, safe='')}"
        return await self._routed(order_id, here, path, params, forwarded, headers)

    async def _routed(
        self,
        order_id: str,
        here: Callable[[], Response],
        path: str,
        params: list[tuple[str, str]],
        forwarded: bool,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """``here()`` if this instance holds the order's partition, else the answer of the
        instance that does (``path`` with ``params``); every answer names who gave it."""
        cluster = self._cluster
        number = cluster.partition_of(order_id)
        try:
            if self._view.holds(number):
                try:
                    return here()
                except PartitionNotHeldError as exc:
                    raise unavailable(exc.partition) from exc
                except HistoryRebuildingError as exc:
                    raise history_rebuilding_problem(exc.partition) from exc
                except HistoryOffError as exc:
                    raise history_off_problem() from exc
            if forwarded:
                raise unavailable(number, "forwarded here, but not held here")
            owner = cluster.owner(number)
            if owner is None:
                raise unavailable(number, "no instance holds it now")
            try:
                answer = await cluster.forward(owner.record.url, path, params, headers or {})
            except OwnerUnreachableError as exc:
                raise unavailable(number, str(exc)) from exc
            return _relayed(answer)
        except ProblemError as problem:
            problem.headers.setdefault(SERVED_BY, cluster.url)
            raise

    # -- pages -----------------------------------------------------------------------

    def local_page(
        self, after: str | None, limit: int, partitions: list[int] | None
    ) -> tuple[Rows, bool]:
        """A page of this instance's partitions (or of ``partitions``, each held here);
        whether more rows follow."""
        try:
            rows = self._view.page(after, limit + 1, partitions)
        except PartitionNotHeldError as exc:
            raise unavailable(exc.partition) from exc
        return rows[:limit], len(rows) > limit

    async def cluster_page(self, after: str | None, limit: int) -> tuple[Rows, bool]:
        """A page of every order: this instance's stores for its partitions, one request
        to each other holder for theirs, merged by id. More rows follow when the merge
        has more than ``limit``, or when a holder said its part has a next page."""
        cluster, view = self._cluster, self._view
        readable = set(view.readable())
        local: list[int] = []
        remote: dict[str, tuple[MemberRecord, list[int]]] = {}
        for number in range(cluster.partitions):
            if number in readable:
                local.append(number)
                continue
            owner = None if view.holds(number) else cluster.owner(number)
            if owner is None:
                raise unavailable(number, "no instance can answer for it now")
            remote.setdefault(owner.record.instance, (owner.record, []))[1].append(number)
        calls = []
        for record, numbers in remote.values():
            params = [("scope", "local"), ("limit", str(limit))]
            params.append(("partitions", ",".join(map(str, numbers))))
            if after is not None:
                params.append(("after", after))
            calls.append(cluster.forward(record.url, "/orders", params))
        pages: list[Rows] = []
        if local:
            # One row beyond the page: whether this instance's part has more.
            try:
                pages.append(view.page(after, limit + 1, local))
            except PartitionNotHeldError as exc:
                raise unavailable(exc.partition) from exc
        answers = await asyncio.gather(*calls, return_exceptions=True)
        more = False
        for (record, numbers), answer in zip(remote.values(), answers, strict=True):
            if isinstance(answer, OwnerUnreachableError):
                raise unavailable(numbers[0], str(answer))
            if isinstance(answer, BaseException):
                raise answer
            if answer.status != 200:
                raise unavailable(numbers[0], f"{record.url} answered {answer.status}")
            rows = _page_decoder.decode(answer.body)
            pages.append([(_id_decoder.decode(raw).id, bytes(raw)) for raw in rows])
            more = more or answer.has_next
        merged: Rows = []
        for row in heapq.merge(*pages):
            if merged and merged[-1][0] == row[0]:
                continue  # the same order from two holders while its partition moves
            merged.append(row)
            if len(merged) > limit:
                break
        return merged[:limit], more or len(merged) > limit

    # -- the cluster -----------------------------------------------------------------

    def readiness(self) -> Readiness:
        """This instance's readiness; one whose workers hold no partition (more instances
        than partitions) is ready while other instances hold every partition."""
        return self._cluster.readiness(self._view.readiness())

    def members(self) -> ClusterModel:
        """Every live member, this one from its own board (fresher than its record)."""
        cluster = self._cluster
        current = self.readiness()
        _, _, partitions = describe_self(self._view)
        members = [
            MemberModel(
                instance=cluster.instance,
                url=cluster.url,
                self=True,
                ready=current.ready,
                waiting_for=list(current.waiting_for),
                started_at=cluster.started_at,
                seen_seconds_ago=0.0,
                partitions=[_partition_model(p) for p in partitions],
            )
        ]
        now = time.time()
        for member in cluster.directory.live(now):
            record = member.record
            if record.instance == cluster.instance:
                continue
            members.append(
                MemberModel(
                    instance=record.instance,
                    url=record.url,
                    self=False,
                    ready=record.ready,
                    waiting_for=list(record.waiting_for),
                    started_at=record.started_at,
                    seen_seconds_ago=round(max(0.0, now - record.published_at), 3),
                    partitions=[_partition_model(p) for p in record.partitions],
                )
            )
        members.sort(key=lambda m: m.url)
        held = {p.number for p in self._view.held()}
        owners: dict[int, str | None] = {}
        for number in range(cluster.partitions):
            owner = cluster.owner(number)
            owners[number] = (
                cluster.url if number in held else owner.record.url if owner is not None else None
            )
        return ClusterModel(members=members, owners=owners)


def _event_item(partition: int, row: EventRow) -> bytes:
    """One event of a history page: its wire JSON as stored (never decoded and encoded
    again), with where and when it was recorded."""
    version, offset, timestamp, event = row
    recorded = format_instant(datetime.fromtimestamp(timestamp / 1000, UTC))
    return b'{"version":%d,"partition":%d,"offset":%d,"timestamp":"%s","event":%s}' % (
        version,
        partition,
        offset,
        recorded.encode(),
        event,
    )


def _partition_model(part: MemberPartition) -> ClusterPartitionModel:
    return ClusterPartitionModel(
        partition=part.partition,
        phase=part.phase,
        consumed=part.consumed,
        end=part.end,
        lag=part.lag,
        history=part.history,
        history_rebuilt=part.history_rebuilt,
        history_target=part.history_target,
    )


__all__ = ["FORWARDED_FROM", "ClusterReads", "describe_self", "etag_of", "matches_any"]
