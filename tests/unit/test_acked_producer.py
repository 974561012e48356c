"""The acknowledging producer's edges, without a broker: every send learns its outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from es_orders.brokers import free_port
from es_orders.kafka.producer import AckedProducer, DeliveryError


@pytest.fixture
def producer() -> Iterator[AckedProducer]:
    # Nothing listens on the port: no record is ever acknowledged.
    producer = AckedProducer(
        {
            "bootstrap.servers": f"127.0.0.1:{free_port()}",
            "message.timeout.ms": 300,
            "log_level": 0,  # the refused connections are expected here
        }
    )
    thread = threading.Thread(target=producer.run)
    thread.start()
    yield producer
    producer.stop()
    thread.join(10)
    assert not thread.is_alive()


def test_an_unacknowledged_record_fails_its_future_within_the_message_timeout(
    producer: AckedProducer,
) -> None:
    future = producer.send("topic", b"1", b"{}")
    with pytest.raises(DeliveryError, match="not acknowledged"):
        future.result(timeout=producer.message_timeout + 5)


def test_a_send_after_stop_is_refused_instead_of_waiting_forever(
    producer: AckedProducer,
) -> None:
    producer.stop()
    # run() closes the producer once its loop sees the stop; then sends are refused.
    for _ in range(100):
        try:
            producer.send("topic", b"1", b"{}")
        except DeliveryError as exc:
            assert "stopping" in str(exc)
            return
        time.sleep(0.05)
    pytest.fail("sends were still accepted after stop")
