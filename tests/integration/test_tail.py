"""``es-orders tail``, run as a process against the session broker."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined,unused-ignore]

from es_orders.brokers import Broker, free_port
from es_orders.codec import encode_event, encode_state, format_instant
from es_orders.domain import Event, fold
from es_orders.workload import order_events
from tests.integration.service_support import service_env

pytestmark = pytest.mark.integration

_Headers = dict[str, bytes]


@dataclass(frozen=True)
class Written:
    """A record as it was written, and where the broker put it."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: _Headers


def write(
    kafka_config: dict[str, Any],
    topic: str,
    records: list[tuple[bytes | None, bytes | None, _Headers]],
    timestamp_ms: int = 1_795_000_000_123,
) -> list[Written]:
    """Produce the records (keys placed as es-orders places them); return their positions.

    ``linger.ms`` lets several records share a batch, which is what Tansu's ListOffsets
    gets wrong: a tail from the end must not show the rest of the last batch.
    """
    producer = Producer({**kafka_config, "partitioner": "murmur2_random", "linger.ms": 50})
    written: list[Written] = []
    errors: list[KafkaError] = []
    for n, (key, value, headers) in enumerate(records):

        def delivered(error: KafkaError | None, message: Message, n: int = n) -> None:
            if error is not None:
                errors.append(error)
                return
            key, value, headers = records[n]
            partition, offset = message.partition(), message.offset()
            assert partition is not None and offset is not None
            written.append(Written(partition, offset, timestamp_ms + n, key, value, headers))

        producer.produce(
            topic,
            key=key,
            value=value,
            headers=list(headers.items()),
            timestamp=timestamp_ms + n,
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0
    assert not errors, errors
    return sorted(written, key=lambda w: (w.partition, w.offset))


def expected_line(topic: str, record: Written, value: Any) -> dict[str, Any]:
    """The line ``tail`` prints for ``record``, whose value it shows as ``value``."""
    return {
        "topic": topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": format_instant(datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)),
        "key": None if record.key is None else record.key.decode(),
        "headers": {name: value.decode() for name, value in record.headers.items()},
        "value": value,
    }


def tail_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "es_orders", "tail", *args]


def run_tail(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tail_command(*args), check=False, env=env, capture_output=True, text=True, timeout=60
    )


def lines_of(stdout: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(line, dict) for line in lines), stdout
    return sorted(lines, key=lambda line: (line["partition"], line["offset"]))


@pytest.fixture
def env(
    broker: Broker, topics: dict[str, str], topic_prefix: str, tmp_path: Path
) -> dict[str, str]:
    """ES_ORDERS_* naming this test's topics (``service_env`` names them as ``topics``)."""
    assert topics["events"] == f"{topic_prefix}-events"
    return service_env(broker.bootstrap_servers, topic_prefix, tmp_path / "state")


def events(orders: int, count: int) -> list[tuple[bytes | None, bytes | None, _Headers]]:
    return [(e.order_id.encode(), encode_event(e), {}) for e in order_events(orders, count)]


def errors_apart(lines: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str | None]]:
    """Each line without its ``error``, and the error (its wording is the codec's)."""
    return [({k: v for k, v in line.items() if k != "error"}, line.get("error")) for line in lines]


def test_events_from_the_beginning_are_every_record_decoded(
    kafka_config: dict[str, Any], topics: dict[str, str], env: dict[str, str]
) -> None:
    legacy = {"id": "legacy-1", "userId": "u1", "productId": "p1", "amount": 2, "price": 10}
    not_json, not_an_event = b"{not json", b'{"type": "OrderCreated"}'
    records = [
        *events(4, 12),
        (b"legacy-1", json.dumps(legacy).encode(), {"origin": b"kotlin"}),
        (b"broken-1", not_json, {}),
        (None, not_an_event, {}),
    ]
    written = write(kafka_config, topics["events"], records)

    done = run_tail(env, "events", "--from-beginning")

    assert done.returncode == 0, done.stderr
    expected: list[tuple[dict[str, Any], str | None]] = []
    for record in written:
        assert record.value is not None
        if record.value == not_json:
            expected.append((expected_line(topics["events"], record, "{not json"), "value is not"))
        elif record.value == not_an_event:
            line = expected_line(topics["events"], record, not_an_event.decode())
            expected.append((line, "invalid event: "))
        else:
            expected.append(
                (expected_line(topics["events"], record, json.loads(record.value)), None)
            )
    shown = errors_apart(lines_of(done.stdout))
    assert [line for line, _ in shown] == [line for line, _ in expected]
    for (line, error), (_, prefix) in zip(shown, expected, strict=True):
        assert (error is None) == (prefix is None), line
        assert error is None or prefix is None or error.startswith(prefix), error


def test_from_the_end_without_follow_prints_nothing_and_exits(
    kafka_config: dict[str, Any], topics: dict[str, str], env: dict[str, str]
) -> None:
    write(kafka_config, topics["events"], events(3, 30))

    started = time.monotonic()
    done = run_tail(env, "events")

    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert time.monotonic() - started < 30


class Following:
    """``tail --follow`` in the background, its lines read as they come."""

    def __init__(self, env: dict[str, str], stderr_path: Path, *args: str) -> None:
        self.stderr_path = stderr_path
        with stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                tail_command(*args, "--follow"), env=env, stdout=subprocess.PIPE, stderr=stderr
            )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            self.lines.put(json.loads(line))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_following(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while "following" not in self.stderr():
            assert self.process.poll() is None, self.stderr()
            assert time.monotonic() < deadline, self.stderr()
            time.sleep(0.05)

    def next_lines(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        return [self.lines.get(timeout=max(0.0, deadline - time.monotonic())) for _ in range(count)]


@pytest.fixture
def following() -> Iterator[list[Following]]:
    """The ``Following`` tails a test appends, killed if still running when it ends."""
    started: list[Following] = []
    yield started
    for tail in started:
        if tail.process.poll() is None:
            tail.process.kill()
            tail.process.wait(10)


def test_follow_prints_what_is_produced_after_it_started_until_ctrl_c(
    kafka_config: dict[str, Any],
    topics: dict[str, str],
    env: dict[str, str],
    tmp_path: Path,
    following: list[Following],
) -> None:
    write(kafka_config, topics["events"], events(3, 9))
    tail = Following(env, tmp_path / "tail.err", "events")
    following.append(tail)
    tail.wait_following()

    later = write(kafka_config, topics["events"], events(2, 2), timestamp_ms=1_796_000_000_000)

    lines = sorted(tail.next_lines(2), key=lambda line: (line["partition"], line["offset"]))
    assert lines == [expected_line(topics["events"], w, json.loads(w.value or b"")) for w in later]
    assert tail.lines.empty()
    os.kill(tail.process.pid, signal.SIGINT)
    assert tail.process.wait(30) == 130
    assert "Traceback" not in tail.stderr()


def test_a_reader_that_stops_reading_ends_tail_quietly(
    kafka_config: dict[str, Any], topics: dict[str, str], env: dict[str, str]
) -> None:
    # Far more than a pipe holds (64 KiB): tail is still writing when the reader goes.
    write(kafka_config, topics["events"], events(200, 2000))
    process = subprocess.Popen(
        tail_command("events", "--from-beginning"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    first = json.loads(process.stdout.readline())
    process.stdout.close()  # what `| head -1` does after its line

    assert process.wait(60) == 0
    assert first["topic"] == topics["events"]
    assert process.stderr.read() == b""


def test_state_shows_order_states_and_tombstones(
    kafka_config: dict[str, Any], topics: dict[str, str], env: dict[str, str]
) -> None:
    by_order: dict[str, list[Event]] = {}
    for event in order_events(3, 8):
        by_order.setdefault(event.order_id, []).append(event)
    states = [fold(order).state for order in by_order.values()]
    records: list[tuple[bytes | None, bytes | None, _Headers]] = [
        (s.id.encode(), encode_state(s), {"source-offset": str(n).encode()})
        for n, s in enumerate(state for state in states if state is not None)
    ]
    records += [(b"gone-1", None, {}), (b"bad-1", b'{"id": "bad-1"}', {})]
    written = write(kafka_config, topics["state"], records)

    done = run_tail(env, "state", "--from-beginning")

    assert done.returncode == 0, done.stderr
    shown = errors_apart(lines_of(done.stdout))
    expected = []
    for record in written:
        if record.key == b"bad-1":
            expected.append(expected_line(topics["state"], record, '{"id": "bad-1"}'))
        else:
            value = None if record.value is None else json.loads(record.value)
            expected.append(expected_line(topics["state"], record, value))
    assert [line for line, _ in shown] == expected
    errors = {line["key"]: error for line, error in shown if error is not None}
    assert list(errors) == ["bad-1"]
    assert errors["bad-1"].startswith("invalid order state"), errors
    assert [line["key"] for line, _ in shown if line["value"] is None] == ["gone-1"]


def test_dlq_shows_the_value_and_why_it_was_dead_lettered(
    kafka_config: dict[str, Any], topics: dict[str, str], env: dict[str, str]
) -> None:
    why = {"error": b"value is not valid JSON", "source": f"{topics['events']}/1/7".encode()}
    records: list[tuple[bytes | None, bytes | None, _Headers]] = [
        (b"o-1", b"{not json", why),
        (b"o-2", b'{"type": "Unknown", "order_id": "o-2"}', {**why, "error": b"invalid event"}),
    ]
    written = write(kafka_config, topics["dlq"], records)

    done = run_tail(env, "dlq", "--from-beginning")

    assert done.returncode == 0, done.stderr
    shown = {w.key: json.loads(w.value or b"") if w.key == b"o-2" else "{not json" for w in written}
    assert lines_of(done.stdout) == [expected_line(topics["dlq"], w, shown[w.key]) for w in written]


def test_an_unknown_topic_kind_is_a_usage_error(env: dict[str, str]) -> None:
    done = run_tail(env, "orders")

    assert done.returncode == 2
    assert "orders" in done.stderr and done.stdout == ""


def test_a_missing_topic_is_an_error_and_is_not_created(
    kafka_config: dict[str, Any], env: dict[str, str], topic_prefix: str
) -> None:
    missing = f"{topic_prefix}-missing"

    done = run_tail({**env, "ES_ORDERS_EVENTS_TOPIC": missing}, "events")

    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"es-orders tail: topic {missing!r} does not exist at {env['ES_ORDERS_BOOTSTRAP_SERVERS']} "
        "(the services create it when they start)"
    )
    assert missing not in AdminClient(kafka_config).list_topics(timeout=10).topics


def test_an_unreachable_broker_is_one_line_and_an_exit_within_a_bounded_time(
    env: dict[str, str],
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    started = time.monotonic()

    done = run_tail(env, "events", "--bootstrap-servers", nobody)

    assert done.returncode == 1
    assert done.stderr.startswith(f"es-orders tail: cannot reach Kafka at {nobody} within 10 s")
    assert done.stderr.count("\n") == 1, done.stderr
    assert time.monotonic() - started < 30
