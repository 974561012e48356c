"""The wire codec: strict typed events, legacy upcasting, clear errors for the rest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

import pytest

from es_orders import codec
from es_orders.codec import (
    CodecError,
    LegacyUpdate,
    decode_record,
    decode_state,
    encode_event,
    encode_state,
    format_instant,
    upcast,
)
from es_orders.domain import (
    Event,
    Idempotency,
    OrderCancelled,
    OrderCreated,
    OrderState,
    OrderStatus,
    PriceChanged,
    ProductChanged,
    QuantityChanged,
    fold,
)

AT = datetime(2026, 11, 28, 14, 0, 1, 250000, tzinfo=UTC)


def typed(event_type: str, data: dict[str, Any], **overrides: Any) -> bytes:
    body = {
        "event_id": "e1",
        "type": event_type,
        "order_id": "1",
        "version": 1,
        "occurred_at": "2026-11-28T14:00:01.250Z",
        "schema_version": 1,
        "data": data,
    }
    body.update(overrides)
    return json.dumps(body).encode()


EVENTS: list[Event] = [
    OrderCreated("e1", "1", 1, AT, "u1", "p1", 3, 1200),
    PriceChanged("e2", "1", 2, AT, 0),
    QuantityChanged("e3", "1", 3, AT, 7),
    ProductChanged("e4", "1", 4, AT, "p2"),
    OrderCancelled("e5", "1", 5, AT, ""),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_type_round_trips(event: Event) -> None:
    assert decode_record(b"1", encode_event(event), 0) == event


def test_encoded_events_follow_the_wire_format() -> None:
    body = json.loads(encode_event(EVENTS[1]))
    assert body == {
        "event_id": "e2",
        "type": "PriceChanged",
        "order_id": "1",
        "version": 2,
        "occurred_at": "2026-11-28T14:00:01.250Z",
        "schema_version": 1,
        "data": {"price": 0},
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'"text"', "JSON str, not an object"),
        (b"{}", "neither a typed event"),
        (typed("OrderShipped", {}), "invalid event"),
        (typed("PriceChanged", {"price": "cheap"}), "Expected `int`"),
        (typed("PriceChanged", {"price": -1}), "invalid event"),
        (typed("QuantityChanged", {"quantity": 0}), "invalid event"),
        (typed("ProductChanged", {"product_id": ""}), "invalid event"),
        (typed("PriceChanged", {"price": 1}, version=0), "invalid event"),
        (typed("PriceChanged", {"price": 1}, schema_version=2), "invalid event"),
        (typed("PriceChanged", {"price": 1}, occurred_at="yesterday"), "invalid event"),
        (typed("PriceChanged", {"price": 1}, occurred_at="2026-11-28T14:00:00"), "invalid event"),
        (typed("OrderCancelled", {}), "missing required field `reason`"),
        (b'{"id": "1", "amount": "many"}', "invalid legacy order record"),
        (b'{"id": "", "price": 1}', "invalid legacy order record"),
    ],
)
def test_bad_records_are_refused_with_a_reason(value: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_record(b"1", value, 0)


def test_a_record_without_value_is_refused() -> None:
    with pytest.raises(CodecError, match="no value"):
        decode_record(b"1", None, 0)


def test_a_key_that_does_not_name_the_order_is_refused() -> None:
    with pytest.raises(CodecError, match="does not match order id"):
        decode_record(b"2", typed("PriceChanged", {"price": 1}), 0)


def test_a_record_without_key_is_accepted() -> None:
    assert isinstance(decode_record(None, typed("PriceChanged", {"price": 1}), 0), PriceChanged)


def test_legacy_records_decode_to_partial_updates_at_the_record_time() -> None:
    value = b'{"id":"1","userId":"1","productId":null,"amount":69}'
    update = decode_record(b"1", value, 1_795_876_000_000)
    assert update == LegacyUpdate(
        "1", "1", None, 69, None, datetime(2026, 11, 28, 14, 26, 40, tzinfo=UTC)
    )


def test_first_legacy_record_creates_the_order_with_what_it_has() -> None:
    update = LegacyUpdate("1", "u", None, None, 12, AT)
    (event,) = upcast(update, None)
    assert isinstance(event, OrderCreated)
    assert (event.version, event.user_id, event.product_id, event.price) == (1, "u", None, 12)


def test_later_legacy_records_become_one_change_per_differing_field() -> None:
    state = fold([OrderCreated("e1", "1", 1, AT, "u", "p", 1, 10)]).state
    events = upcast(LegacyUpdate("1", "other", "p2", 4, 11, AT), state)
    assert [(type(e), e.version) for e in events] == [
        (PriceChanged, 2),
        (QuantityChanged, 3),
        (ProductChanged, 4),
    ]
    assert upcast(LegacyUpdate("1", "u", "p", 1, 10, AT), state) == ()


def test_derived_event_ids_are_stable_across_replays() -> None:
    first = upcast(LegacyUpdate("1", "u", None, None, 12, AT), None)
    again = upcast(LegacyUpdate("1", "u", None, None, 12, AT), None)
    assert first == again


def test_state_round_trips_and_keeps_nulls() -> None:
    state = OrderState("9", None, None, None, 5, OrderStatus.OPEN, 1, AT, AT)
    body = json.loads(encode_state(state))
    assert body["quantity"] is None
    assert body["created_at"] == "2026-11-28T14:00:01.250000Z"
    assert decode_state(encode_state(state)) == state


@pytest.mark.parametrize("value", [b"nope", b'{"id": "1"}', b'{"id": 1}'])
def test_invalid_states_are_refused(value: bytes) -> None:
    with pytest.raises(CodecError, match="invalid order state"):
        decode_state(value)


def test_instants_are_formatted_in_utc() -> None:
    local = datetime(2026, 11, 28, 15, 0, tzinfo=timezone(timedelta(hours=1)))
    assert format_instant(local) == "2026-11-28T14:00:00.000Z"


def test_event_times_with_an_offset_are_kept_in_utc() -> None:
    value = typed("PriceChanged", {"price": 1}, occurred_at="2026-11-28T15:00:01.250+01:00")
    event = decode_record(b"1", value, 0)
    assert event.occurred_at == AT
    assert event.occurred_at.tzinfo is UTC


def test_every_wire_type_has_a_domain_event() -> None:
    assert set(codec._TO_EVENT) == set(get_args(codec._Wire))


def test_the_version_of_a_state_is_read_without_the_rest() -> None:
    state = OrderState("9", None, None, None, 5, OrderStatus.OPEN, 7, AT, AT)
    assert codec.state_version(encode_state(state)) == 7
    with pytest.raises(CodecError, match="invalid order state"):
        codec.state_version(b'{"id": "9"}')


def test_the_optional_idempotency_member_round_trips_and_is_absent_otherwise() -> None:
    """Events of a request with an Idempotency-Key carry it; all others are written byte
    for byte as before the member existed, and events without it read as before."""
    at = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)
    plain = PriceChanged("e-1", "1", 2, at, 13)
    keyed = PriceChanged("e-1", "1", 2, at, 13, Idempotency("k-1", "ab" * 32))
    assert b"idempotency" not in encode_event(plain)
    assert json.loads(encode_event(keyed))["idempotency"] == {"key": "k-1", "digest": "ab" * 32}
    assert decode_record(b"1", encode_event(keyed), 0) == keyed
    assert decode_record(b"1", encode_event(plain), 0) == plain
    # A key that is no header value (a space) makes the record a dead letter, not a state.
    bad = json.loads(encode_event(keyed))
    bad["idempotency"]["key"] = "a b"
    with pytest.raises(CodecError):
        decode_record(b"1", json.dumps(bad).encode(), 0)


def test_a_kept_event_decodes_typed_or_as_upcast_from_a_legacy_record() -> None:
    typed = OrderCreated("e1", "o1", 1, datetime(2026, 1, 2, tzinfo=UTC), "u", "p", 2, 300)
    assert codec.decode_kept_event(codec.encode_event(typed)) == typed
    update = codec.LegacyUpdate("o2", None, "p", None, 5, datetime(2026, 1, 2, tzinfo=UTC))
    (created,) = codec.upcast(update, None)
    assert codec.decode_kept_event(codec.encode_event(created)) == created
    with pytest.raises(codec.CodecError, match="invalid event"):
        codec.decode_kept_event(b'{"type": "OrderCreated"}')
    with pytest.raises(codec.CodecError, match="not valid JSON"):
        codec.decode_kept_event(b"{")
