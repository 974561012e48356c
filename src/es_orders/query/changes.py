"""Live changes: ``GET /changes`` streams every changed order state of the cluster as
Server-Sent Events, read from the changelog topic.

The changelog holds the changes of every partition, whichever instance folded them, so
each stream reads all of its partitions itself: a consumer of its own, in no group,
assigned every partition from the end, or from the positions in ``Last-Event-ID``. Its
reader and response are ``query.change_stream``; this module opens them, at most
``max_streams`` at once, and ends them when the service stops.

An event's id is the changelog position after it: the next offset of every partition,
comma-separated in partition order. A resume needs them all, since one partition's offset
says nothing about the others'; the consumer then starts at exactly those offsets, so a
reconnect neither loses nor repeats a change. Records a ``?order_id=`` filter skips move
the position too, but only events carry it out.

"From the end" is the end ListOffsets reports, and on Tansu that is the start of the
partition's last batch (docs/architecture.md, "Brokers"): a new stream there may begin
with a few changes made just before it opened. Never without one made after.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Annotated, Any

from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from fastapi import FastAPI, Header, Query
from fastapi.responses import Response

from es_orders.domain.events import MAX_ID_LENGTH
from es_orders.http.problems import (
    CHANGES_UNAVAILABLE,
    InvalidInput,
    problem_responses,
    validation_problem,
)
from es_orders.query.change_stream import ChangelogReader, ChangeStream

EVENT_ID_PATTERN = r"^[0-9]{1,18}(,[0-9]{1,18}){0,999}$"
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_OPEN_TIMEOUT_S = 5.0


def parse_event_id(text: str, partitions: int) -> list[int]:
    """The next offset of each changelog partition that ``Last-Event-ID`` names; a 422
    ``validation-error`` unless it is ``partitions`` non-negative integers."""
    parts = text.split(",")
    if _EVENT_ID.fullmatch(text) is None or len(parts) != partitions:
        raise validation_problem(
            [
                InvalidInput(
                    ("header", "Last-Event-ID"),
                    f"expected {partitions} offsets, comma-separated, one per partition of "
                    "the changelog: the id of an event of this stream",
                    text,
                )
            ]
        )
    return [int(part) for part in parts]


class ChangeFeed:
    """Opens a change stream per client, ``max_streams`` at once at most. A service worker
    (``run``/``stop``): a stopping service ends its streams and waits for their consumers
    to close."""

    def __init__(
        self,
        kafka: dict[str, Any],
        topic: str,
        *,
        heartbeat_s: float,
        queue_size: int,
        max_streams: int,
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._heartbeat_s = heartbeat_s
        self._queue_size = queue_size
        self._max_streams = max_streams
        self._lock = threading.Lock()
        self._opening = 0
        self._streams: set[ChangeStream] = set()
        self._stopped = threading.Event()

    async def open(self, last_event_id: str | None, order_id: str | None) -> ChangeStream:
        """A stream from the changelog's end, or from ``last_event_id``; a 503
        ``changes-unavailable`` at the limit, while stopping, or without the broker."""
        with self._lock:
            if self._stopped.is_set():
                raise CHANGES_UNAVAILABLE("the service is stopping", headers={"Retry-After": "1"})
            if self._opening + len(self._streams) >= self._max_streams:
                raise CHANGES_UNAVAILABLE(
                    f"this instance streams changes to {self._max_streams} clients already; "
                    "retry later or ask another instance",
                    extra={"max_streams": self._max_streams},
                    headers={"Retry-After": "5"},
                )
            self._opening += 1
        try:
            consumer, positions = await asyncio.to_thread(self._assigned, last_event_id)
            stream = ChangeStream(
                ChangelogReader(consumer, positions, order_id, self._queue_size),
                ",".join(map(str, positions)),
                heartbeat_s=self._heartbeat_s,
                queue_size=self._queue_size,
                on_end=self._ended,
            )
            with self._lock:
                self._streams.add(stream)
                if self._stopped.is_set():
                    stream.stop_soon()
        finally:
            with self._lock:
                self._opening -= 1
        return stream

    def _ended(self, stream: ChangeStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def _assigned(self, last_event_id: str | None) -> tuple[Consumer, list[int]]:
        """A consumer assigned every changelog partition at the stream's start, and that
        start: each partition's end, or the positions in ``last_event_id``."""
        consumer = Consumer(
            {
                # Tansu holds an empty fetch for the whole wait: keep changes prompt there.
                "fetch.wait.max.ms": 100,
                **self._kafka,
                # Assigned, never subscribed: the id joins no group, nothing is committed.
                "group.id": "es-orders-changes",
                "enable.auto.commit": False,
                # A position compacted or deleted away: on from the earliest record kept.
                "auto.offset.reset": "earliest",
                # What librdkafka fetches ahead, per stream (its default is 64 MiB).
                "queued.max.messages.kbytes": 1024,
            }
        )
        try:
            positions = self._start(consumer, last_event_id)
            consumer.assign(
                [TopicPartition(self._topic, n, offset) for n, offset in enumerate(positions)]
            )
        except KafkaException as exc:
            consumer.close()
            raise CHANGES_UNAVAILABLE(
                f"the changelog topic {self._topic} cannot be read now: {exc}",
                headers={"Retry-After": "1"},
            ) from exc
        except BaseException:
            consumer.close()
            raise
        return consumer, positions

    def _start(self, consumer: Consumer, last_event_id: str | None) -> list[int]:
        topic = consumer.list_topics(self._topic, timeout=_OPEN_TIMEOUT_S).topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise CHANGES_UNAVAILABLE(
                f"the changelog topic {self._topic} cannot be read now",
                headers={"Retry-After": "1"},
            )
        count = len(topic.partitions)
        if last_event_id is not None:
            return parse_event_id(last_event_id, count)
        # A timestamp of OFFSET_END asks for each partition's end, in one request.
        ends = consumer.offsets_for_times(
            [TopicPartition(self._topic, n, OFFSET_END) for n in range(count)],
            timeout=_OPEN_TIMEOUT_S,
        )
        return [max(0, end.offset) for end in sorted(ends, key=lambda end: end.partition)]

    def run(self) -> None:
        self._stopped.wait()
        with self._lock:
            streams = list(self._streams)
        deadline = time.monotonic() + 3.0
        for stream in streams:
            stream.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            streams = list(self._streams)
        for stream in streams:
            stream.stop_soon()


def add_change_routes(app: FastAPI, feed: ChangeFeed | None) -> None:
    """GET /changes on ``app``, streaming from ``feed`` (None: an instance without a
    broker, which answers 503 ``changes-unavailable``)."""

    @app.get(
        "/changes",
        tags=["orders"],
        summary="Live changes of every order of the cluster, as Server-Sent Events",
        responses={
            200: {
                "description": "A `text/event-stream`: an event `change` per changed order "
                'state, `data` `{"order_id", "version", "partition", "offset", "state"}`, '
                "`id` the changelog position after it (the next offset of each partition); "
                "`: heartbeat` comments while there is none; a last event `overflow` if the "
                "client falls too far behind.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **problem_responses(422, 500, 503),
        },
    )
    async def changes(
        order_id: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=MAX_ID_LENGTH,
                description="Only the changes of this order.",
            ),
        ] = None,
        last_event_id: Annotated[
            str | None,
            Header(
                pattern=EVENT_ID_PATTERN,
                description="Resume after the event with this id: exactly the changes since.",
                examples=["12,7,30"],
            ),
        ] = None,
    ) -> Response:
        if feed is None:
            raise CHANGES_UNAVAILABLE(
                "this instance does not stream changes", headers={"Retry-After": "60"}
            )
        return await feed.open(last_event_id, order_id)
