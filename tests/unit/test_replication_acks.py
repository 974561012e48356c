"""Delivery reports of the changelog: an acknowledgement without an offset is still one."""

from __future__ import annotations

from es_orders.runtime.replication import _Acks


class _Report:
    def __init__(self, partition: int, offset: int | None) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int | None:
        return self._offset


def test_an_acknowledged_retry_without_an_offset_keeps_the_restore_position() -> None:
    """An idempotent producer's retry the broker knew as written reports no offset."""
    acks = _Acks()
    acks.on_last_changelog(None, _Report(1, 41))
    acks.on_last_changelog(None, _Report(1, None))
    acks.on_last_changelog(None, _Report(2, None))

    assert acks.changelog_next == {1: 42}
    assert acks.errors == []
