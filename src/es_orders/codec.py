"""The wire format: the only module that reads or writes event and order-state JSON.

Typed events (docs/architecture.md, "Event wire format") are validated strictly; records of the
original Kotlin command service (``{"id", "userId", "productId", "amount", "price"}``)
decode to a ``LegacyUpdate`` that ``upcast`` turns into typed events against the order's
current state. Anything else raises ``CodecError``: the runtime sends that record, unchanged,
to the dead letter topic.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec.structs import replace

from es_orders.domain import (
    Event,
    Idempotency,
    OrderCancelled,
    OrderCreated,
    OrderState,
    PriceChanged,
    ProductChanged,
    QuantityChanged,
)
from es_orders.domain.events import (
    Id,
    Instant,
    Price,
    Quantity,
    Version,
)
from es_orders.errors import EsOrdersError

SCHEMA_VERSION = 1
# Ids of events derived from legacy records are stable across replays: uuid5 of order/version.
LEGACY_EVENT_NAMESPACE = uuid.UUID("2f7d3f0e-5a8c-4d0e-9a51-6c1f0b3e8a77")


class CodecError(EsOrdersError):
    """A record that is not a valid event, or a state that is not valid order JSON."""


# Ids, integers and instants have the domain's bounds (domain.events): events, states and
# both HTTP APIs agree on them.
_Text = Annotated[str, msgspec.Meta(max_length=4096)]


class _CreatedData(msgspec.Struct, gc=False):
    user_id: Id
    product_id: Id
    quantity: Quantity
    price: Price


class _PriceData(msgspec.Struct, gc=False):
    price: Price


class _QuantityData(msgspec.Struct, gc=False):
    quantity: Quantity


class _ProductData(msgspec.Struct, gc=False):
    product_id: Id


class _CancelledData(msgspec.Struct, gc=False):
    reason: _Text


# gc=False: these hold only strings, numbers and each other, never a cycle; untracked,
# the hundreds of thousands decoded per second no longer trigger collections that
# otherwise take half the decoding time. kw_only: lets the optional ``idempotency``
# (added in 0.2, absent from older events) come before each type's ``data``.
class _Envelope(msgspec.Struct, tag_field="type", gc=False, kw_only=True):
    event_id: Id
    order_id: Id
    version: Version
    occurred_at: Instant
    schema_version: Literal[1]
    # The domain's own Struct, bounds included: decoded as it is, with no copy per event.
    idempotency: Idempotency | None = None


class _CreatedWire(_Envelope, tag="OrderCreated", gc=False):
    data: _CreatedData


class _PriceWire(_Envelope, tag="PriceChanged", gc=False):
    data: _PriceData


class _QuantityWire(_Envelope, tag="QuantityChanged", gc=False):
    data: _QuantityData


class _ProductWire(_Envelope, tag="ProductChanged", gc=False):
    data: _ProductData


class _CancelledWire(_Envelope, tag="OrderCancelled", gc=False):
    data: _CancelledData


_Wire = _CreatedWire | _PriceWire | _QuantityWire | _ProductWire | _CancelledWire


class _LegacyWire(msgspec.Struct, gc=False):
    id: Id
    userId: Id | None = None  # noqa: N815 - the legacy field name
    productId: Id | None = None  # noqa: N815 - the legacy field name
    amount: Quantity | None = None
    price: Price | None = None


@dataclass(frozen=True, slots=True)
class LegacyUpdate:
    """A partial update from the original Kotlin service; None means "not in this record"."""

    order_id: str
    user_id: str | None
    product_id: str | None
    quantity: int | None
    price: int | None
    occurred_at: datetime


_wire_decoder = msgspec.json.Decoder(_Wire)


class _UpcastCreatedData(msgspec.Struct, gc=False):
    """What an order created from a legacy record has: whatever that record held."""

    user_id: Id | None = None
    product_id: Id | None = None
    quantity: Quantity | None = None
    price: Price | None = None


class _UpcastCreatedWire(_Envelope, tag="OrderCreated", gc=False):
    data: _UpcastCreatedData


_upcast_created_decoder = msgspec.json.Decoder(_UpcastCreatedWire)
_any_decoder = msgspec.json.Decoder()
# OrderState is its own wire format: its annotations are the bounds checked on read.
_state_decoder = msgspec.json.Decoder(OrderState)
_encoder = msgspec.json.Encoder()


def format_instant(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a ``Z``, as every timestamp on the wire."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc(moment: datetime) -> datetime:
    # msgspec gives "Z" the UTC singleton: the identity check spares the common case a call.
    if moment.tzinfo is UTC or not moment.utcoffset():
        return moment
    return moment.astimezone(UTC)


def _created(w: _CreatedWire) -> Event:
    d = w.data
    return OrderCreated(
        w.event_id,
        w.order_id,
        w.version,
        _utc(w.occurred_at),
        d.user_id,
        d.product_id,
        d.quantity,
        d.price,
        w.idempotency,
    )


def _price(w: _PriceWire) -> Event:
    at = _utc(w.occurred_at)
    return PriceChanged(w.event_id, w.order_id, w.version, at, w.data.price, w.idempotency)


def _quantity(w: _QuantityWire) -> Event:
    at = _utc(w.occurred_at)
    return QuantityChanged(w.event_id, w.order_id, w.version, at, w.data.quantity, w.idempotency)


def _product(w: _ProductWire) -> Event:
    at = _utc(w.occurred_at)
    return ProductChanged(w.event_id, w.order_id, w.version, at, w.data.product_id, w.idempotency)


def _cancelled(w: _CancelledWire) -> Event:
    at = _utc(w.occurred_at)
    return OrderCancelled(w.event_id, w.order_id, w.version, at, w.data.reason, w.idempotency)


# A lookup by type instead of a match: this runs once per event folded, and a match
# with attribute patterns cost three times as much. A test checks every wire type is here.
_TO_EVENT: dict[type, Callable[[Any], Event]] = {
    _CreatedWire: _created,
    _PriceWire: _price,
    _QuantityWire: _quantity,
    _ProductWire: _product,
    _CancelledWire: _cancelled,
}


def _why_not(raw: object, typed_error: msgspec.ValidationError) -> CodecError:
    """Explain a JSON value that is neither a typed event nor a legacy record."""
    if not isinstance(raw, dict):
        return CodecError(f"value is a JSON {type(raw).__name__}, not an object")
    if "type" in raw:
        return CodecError(f"invalid event: {typed_error}")
    return CodecError("value is neither a typed event (no `type`) nor a legacy order (no `id`)")


def decode_record(
    key: bytes | None, value: bytes | None, timestamp_ms: int
) -> Event | LegacyUpdate:
    """Decode one record of the events topic, or raise ``CodecError`` saying why not."""
    if value is None:
        raise CodecError("record has no value")
    try:
        wire = _wire_decoder.decode(value)
        decoded: Event | LegacyUpdate = _TO_EVENT[type(wire)](wire)
    except msgspec.ValidationError as typed_error:
        decoded = _decode_legacy(value, timestamp_ms, typed_error)
    except msgspec.DecodeError:
        raise CodecError("value is not valid JSON") from None
    if key is not None and key != decoded.order_id.encode():
        raise CodecError(f"record key {key!r} does not match order id {decoded.order_id!r}")
    return decoded


def decode_kept_event(value: bytes) -> Event:
    """An event as an order's history keeps it (``encode_event``): a typed event, or one
    a legacy record was upcast into, whose ``OrderCreated`` may lack values."""
    try:
        wire = _wire_decoder.decode(value)
    except msgspec.ValidationError:
        try:
            return _created(_upcast_created_decoder.decode(value))  # type: ignore[arg-type]
        except msgspec.ValidationError as exc:
            raise CodecError(f"invalid event: {exc}") from None
    except msgspec.DecodeError:
        raise CodecError("value is not valid JSON") from None
    return _TO_EVENT[type(wire)](wire)


def _decode_legacy(
    value: bytes, timestamp_ms: int, typed_error: msgspec.ValidationError
) -> LegacyUpdate:
    try:
        raw = _any_decoder.decode(value)
    except msgspec.DecodeError:  # pragma: no cover - the typed decoder saw valid JSON
        raise CodecError("value is not valid JSON") from None
    if not isinstance(raw, dict) or "type" in raw or "id" not in raw:
        raise _why_not(raw, typed_error)
    try:
        legacy = msgspec.convert(raw, _LegacyWire)
    except msgspec.ValidationError as exc:
        raise CodecError(f"invalid legacy order record: {exc}") from None
    return LegacyUpdate(
        order_id=legacy.id,
        user_id=legacy.userId,
        product_id=legacy.productId,
        quantity=legacy.amount,
        price=legacy.price,
        occurred_at=datetime.fromtimestamp(timestamp_ms / 1000, UTC),
    )


def _legacy_event_id(order_id: str, version: int) -> str:
    return str(uuid.uuid5(LEGACY_EVENT_NAMESPACE, f"{order_id}/{version}"))


def upcast(update: LegacyUpdate, state: OrderState | None) -> tuple[Event, ...]:
    """Typed events for a legacy partial update, versioned after ``state``.

    The first record of an unknown order creates it (missing fields stay null); later
    records become one change event per field that differs from the state.
    """
    oid, at = update.order_id, update.occurred_at
    if state is None:
        created = OrderCreated(
            _legacy_event_id(oid, 1),
            oid,
            1,
            at,
            update.user_id,
            update.product_id,
            update.quantity,
            update.price,
        )
        return (created,)
    events: list[Event] = []
    version = state.version
    if update.price is not None and update.price != state.price:
        version += 1
        events.append(PriceChanged(_legacy_event_id(oid, version), oid, version, at, update.price))
    if update.quantity is not None and update.quantity != state.quantity:
        version += 1
        events.append(
            QuantityChanged(_legacy_event_id(oid, version), oid, version, at, update.quantity)
        )
    if update.product_id is not None and update.product_id != state.product_id:
        version += 1
        events.append(
            ProductChanged(_legacy_event_id(oid, version), oid, version, at, update.product_id)
        )
    return tuple(events)


def _event_data(event: Event) -> tuple[str, dict[str, Any]]:
    match event:
        case OrderCreated():
            data = {
                "user_id": event.user_id,
                "product_id": event.product_id,
                "quantity": event.quantity,
                "price": event.price,
            }
            return "OrderCreated", data
        case PriceChanged():
            return "PriceChanged", {"price": event.price}
        case QuantityChanged():
            return "QuantityChanged", {"quantity": event.quantity}
        case ProductChanged():
            return "ProductChanged", {"product_id": event.product_id}
        case OrderCancelled():
            return "OrderCancelled", {"reason": event.reason}
    raise AssertionError(event)  # pragma: no cover - the union above is exhaustive


def encode_event(event: Event) -> bytes:
    """The JSON value of a typed event, as the command service appends it."""
    event_type, data = _event_data(event)
    wire: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event_type,
        "order_id": event.order_id,
        "version": event.version,
        "occurred_at": format_instant(event.occurred_at),
        "schema_version": SCHEMA_VERSION,
        "data": data,
    }
    if event.idempotency is not None:
        # Optional: written only for a request with an Idempotency-Key, so events without
        # one stay byte for byte what they were (and what older readers expect).
        wire["idempotency"] = {"key": event.idempotency.key, "digest": event.idempotency.digest}
    return _encoder.encode(wire)


def state_to_dict(state: OrderState) -> dict[str, Any]:
    """The order state as the query API and the changelog show it."""
    result: dict[str, Any] = msgspec.to_builtins(state)
    return result


def encode_state(state: OrderState) -> bytes:
    """The state's JSON; msgspec writes the Struct (timestamps RFC 3339, in UTC) in C, which
    matters: the fold encodes one state per changed order per batch."""
    return _encoder.encode(state)


class _Versioned(msgspec.Struct, gc=False):
    """The one member of an order state an ETag needs; the rest is skipped unparsed."""

    version: int


_version_decoder = msgspec.json.Decoder(_Versioned)


def state_version(state: bytes) -> int:
    """The ``version`` of order-state JSON, without decoding the rest of it."""
    try:
        return _version_decoder.decode(state).version
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise CodecError(f"invalid order state: {exc}") from None


def decode_state(value: bytes) -> OrderState:
    """An order state from the changelog or the local store."""
    try:
        state = _state_decoder.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise CodecError(f"invalid order state: {exc}") from None
    return replace(state, created_at=_utc(state.created_at), updated_at=_utc(state.updated_at))


def state_json_schema(ref_template: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON Schema of order-state JSON, as ``encode_state`` writes and ``decode_state``
    reads it: the schema itself (a reference) and the named schemas it refers to.

    ``ref_template`` places the named schemas, e.g. ``"#/components/schemas/{name}"``.
    """
    (schema,), components = msgspec.json.schema_components((OrderState,), ref_template=ref_template)
    return schema, components
