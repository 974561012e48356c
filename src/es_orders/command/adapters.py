"""The handler's two seams bound to the real thing: the materialized view and Kafka."""

from __future__ import annotations

from concurrent.futures import Future

from es_orders.codec import decode_state, encode_event
from es_orders.command.errors import NotReadyError
from es_orders.domain import Event, OrderState
from es_orders.kafka.producer import AckedProducer, Delivered
from es_orders.runtime.views import OrderView, PartitionNotHeldError


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
