"""The handler's two seams bound to the real thing: the materialized view and Kafka."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from es_orders.codec import decode_state, encode_event
from es_orders.command.errors import NotReadyError
from es_orders.domain import Event, OrderState
from es_orders.kafka.producer import AckedProducer, Delivered
from es_orders.runtime.views import OrderView, PartitionNotHeldError, Readiness


class ViewStates:
    """Order states from a materialized view (its committed checkpoints, read-only)."""

    def __init__(self, view: OrderView) -> None:
        self._view = view

    def get(self, order_id: str) -> OrderState | None:
        try:
            raw = self._view.get(order_id)
        except PartitionNotHeldError as exc:
            # Revoked since readiness was checked: decide nothing against a partial view.
            raise NotReadyError((str(exc),)) from exc
        return None if raw is None else decode_state(raw)


class KafkaEventLog:
    """Appends events to the events topic, keyed by order id, in the codec's wire format."""

    def __init__(self, producer: AckedProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    def append(self, event: Event) -> Future[Delivered]:
        return self._producer.send(self._topic, event.order_id.encode(), encode_event(event))


def owns_every_partition(
    readiness: Callable[[], Readiness], assigned: Callable[[], set[int]], partitions: int
) -> Callable[[], Readiness]:
    """Readiness that also requires this instance to hold all ``partitions``.

    A command is decided against the whole history of its order. An instance that holds
    only some partitions (a second instance joined the group) would take orders in the
    others for unknown ones, so it refuses commands instead of deciding them wrongly.
    """

    def check() -> Readiness:
        ready = readiness()
        missing = sorted(set(range(partitions)) - assigned())
        if not ready.ready or not missing:
            return ready
        waiting = (
            f"partitions {missing} (this instance must own every partition: is a second "
            "command service running in the same group?)",
        )
        return Readiness(False, ready.waiting_for + waiting, ready.partitions)

    return check
