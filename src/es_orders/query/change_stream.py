"""One client's stream of live changes: a changelog reader on a thread of its own, and
the ``text/event-stream`` response it feeds through a bounded queue (``query.changes``
opens them).

The queue is all the server keeps for a client, ``queue_size`` events at most. A reader
that finds it full waits for room; a client that takes none of it for
``OVERFLOW_GRACE_S`` is too slow: its reader stops, what was queued for it is dropped,
and it gets one last event, ``overflow``, saying why and where to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from es_orders.codec import CodecError, state_version
from es_orders.kafka.records import position_of

log = logging.getLogger(__name__)

# How long a stream's queue may stay full, the client taking none of it, before the
# client counts as too slow: a burst larger than the queue is no reason to disconnect a
# client that reads.
OVERFLOW_GRACE_S = 2.0
# After an overflow, or once the service stops, how long the response may take for its
# last bytes before it is abandoned (a client that reads nothing would hold it forever).
FINAL_SEND_TIMEOUT_S = 5.0
RETRY_MS = 1000  # how soon an EventSource reconnects after the stream ends
_CHUNK_BYTES = 65_536  # queued events written to the client at once, at most
_POLL_S = 0.25  # how soon a reader notices it was stopped

Wake = Callable[[], None]


def format_event(event_id: str, kind: str, data: bytes) -> bytes:
    """One Server-Sent Event; a line break in ``data`` continues it on another data line."""
    lines = b"".join(b"data: " + line + b"\n" for line in data.splitlines() or [b""])
    return b"id: %s\nevent: %s\n%s\n" % (event_id.encode(), kind.encode(), lines)


class ChangelogReader:
    """Reads an assigned changelog consumer on its own thread into a bounded queue of
    formatted events, each with the position after it as its id; closes the consumer."""

    def __init__(
        self, consumer: Consumer, positions: list[int], order_id: str | None, size: int
    ) -> None:
        self._consumer = consumer
        self._positions = positions
        self._wanted = None if order_id is None else order_id.encode()
        self.queue: queue.Queue[tuple[str, bytes]] = queue.Queue(size)
        self.overflowed = False
        self.finished = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="changes", daemon=True)
        self._wake: Wake = lambda: None

    def start(self, wake: Wake) -> None:
        """Read until ``stop``; ``wake`` (called on the reader's thread) says there are
        events to take, or that it overflowed or finished."""
        self._wake = wake
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def join(self, timeout: float) -> None:
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def take(self) -> tuple[str, bytes] | None:
        """The events queued now, up to ``_CHUNK_BYTES``: (id of the last, their bytes)."""
        chunks: list[bytes] = []
        size, last_id = 0, ""
        while size < _CHUNK_BYTES:
            try:
                last_id, chunk = self.queue.get_nowait()
            except queue.Empty:
                break
            chunks.append(chunk)
            size += len(chunk)
        return (last_id, b"".join(chunks)) if chunks else None

    def drop_queued(self) -> None:
        with self.queue.mutex:
            self.queue.queue.clear()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set() and not self.overflowed:
                queued = False
                for message in self._consumer.consume(500, _POLL_S):
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("changes: fetch error error=%s", error)
                        continue
                    event = self._event(message)
                    if event is not None:
                        if not self._put(event):
                            break
                        queued = True
                if queued:
                    self._wake()
        except KafkaException:
            log.exception("changes: the changelog consumer failed; the stream ends")
        finally:
            self._consumer.close()
            self.finished = True
            self._wake()

    def _event(self, message: Any) -> tuple[str, bytes] | None:
        partition, offset = position_of(message)
        self._positions[partition] = offset + 1
        key, value = message.key(), message.value()
        if key is None or value is None or (self._wanted is not None and key != self._wanted):
            return None
        try:
            version = state_version(value)
        except CodecError as exc:
            log.warning("changes: skipping partition=%d offset=%d: %s", partition, offset, exc)
            return None
        event_id = ",".join(map(str, self._positions))
        data = msgspec.json.encode(
            {
                "order_id": key.decode(errors="replace"),
                "version": version,
                "partition": partition,
                "offset": offset,
                "state": msgspec.Raw(value),
            }
        )
        return event_id, format_event(event_id, "change", data)

    def _put(self, event: tuple[str, bytes]) -> bool:
        """Queue ``event``, waiting up to ``OVERFLOW_GRACE_S`` for room; False: overflowed
        (or stopped)."""
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self._wake()  # the response takes what is there while this waits
        else:
            return True
        deadline = time.monotonic() + OVERFLOW_GRACE_S
        while not self._stopping.is_set():
            try:
                self.queue.put(event, timeout=_POLL_S)
            except queue.Full:
                if time.monotonic() >= deadline:
                    log.warning(
                        "changes: a client took none of %d queued changes for %gs; it is "
                        "disconnected",
                        self.queue.maxsize,
                        OVERFLOW_GRACE_S,
                    )
                    self.overflowed = True
                    return False
            else:
                return True
        return False


class ChangeStream(Response):
    """One client's ``text/event-stream``: what its reader queues, a heartbeat after
    ``heartbeat_s`` without one, and an ``overflow`` event if the client falls behind."""

    media_type = "text/event-stream"

    def __init__(
        self,
        reader: ChangelogReader,
        start_id: str,
        *,
        heartbeat_s: float,
        queue_size: int,
        on_end: Callable[[ChangeStream], None],
    ) -> None:
        # Not Response.__init__, which would declare an empty body (content-length: 0).
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._reader = reader
        self._last_id = start_id
        self._heartbeat_s = heartbeat_s
        self._queue_size = queue_size
        self._on_end = on_end
        self._gone = False
        self._stopping = False
        self._hurry: Wake = lambda: None  # set once it streams

    def stop_soon(self) -> None:
        """End the stream (the service stops); callable from any thread."""
        self._stopping = True
        self._reader.stop()
        self._hurry()

    def join(self, timeout: float) -> None:
        """Wait for the reader to close its consumer."""
        self._reader.join(timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        watcher = asyncio.create_task(self._watch(receive, wake))
        streaming = True
        try:
            async with asyncio.timeout(None) as deadline:

                def hurry() -> None:  # on the loop: the response has little time left
                    if streaming:  # a reader's last call may come after the response
                        deadline.reschedule(loop.time() + FINAL_SEND_TIMEOUT_S)
                    wake.set()

                def wake_from_reader() -> None:
                    _call_on(loop, hurry if self._reader.overflowed else wake.set)

                self._hurry = lambda: _call_on(loop, hurry)
                if self._stopping:
                    hurry()
                self._reader.start(wake_from_reader)
                await self._stream(send, wake, loop)
        except TimeoutError:
            log.warning(
                "changes: abandoned a stream whose client took no data for %gs",
                FINAL_SEND_TIMEOUT_S,
            )
        finally:
            streaming = False
            watcher.cancel()
            self._reader.stop()
            self._on_end(self)

    async def _watch(self, receive: Receive, wake: asyncio.Event) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        wake.set()

    async def _stream(
        self, send: Send, wake: asyncio.Event, loop: asyncio.AbstractEventLoop
    ) -> None:
        written_at = loop.time()

        async def write(body: bytes) -> None:
            nonlocal written_at
            await send({"type": "http.response.body", "body": body, "more_body": True})
            written_at = loop.time()

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        # Where it starts, as an id without an event: a browser resumes from there if it
        # reconnects before the first change, and misses nothing.
        await write(b"retry: %d\nid: %s\n\n" % (RETRY_MS, self._last_id.encode()))
        reader = self._reader
        while not (self._gone or self._stopping or reader.overflowed):
            taken = reader.take()
            if taken is not None:
                await write(taken[1])
                self._last_id = taken[0]
                continue
            if reader.finished:
                break
            wake.clear()  # then look again: a wake-up before the clear is not lost
            if not reader.queue.empty() or reader.finished or reader.overflowed:
                continue
            try:
                quiet = loop.time() - written_at
                await asyncio.wait_for(wake.wait(), max(0.0, self._heartbeat_s - quiet))
            except TimeoutError:
                await write(b": heartbeat\n\n")
        if self._gone:
            return
        if reader.overflowed:
            reader.drop_queued()
            await write(self._overflow_event())
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _overflow_event(self) -> bytes:
        reason = (
            f"this client fell {self._queue_size} changes behind and took none of them for "
            f"{OVERFLOW_GRACE_S:g} s; reconnect with Last-Event-ID: {self._last_id}"
        )
        data = msgspec.json.encode({"reason": reason, "last_event_id": self._last_id})
        return format_event(self._last_id, "overflow", data)


def _call_on(loop: asyncio.AbstractEventLoop, callback: Wake) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the response is over
        loop.call_soon_threadsafe(callback)
