"""The fold's cache of order states: bounded by bytes, shared by a worker's partitions.

Folding a record needs its order's current state. Reading it from SQLite and decoding
it per record would cost more than the fold itself, so states stay in memory between
batches; but only up to a configured size (``--cache-mb``), whatever the number of
orders, as Kafka Streams bounds its record caches. What the cache does not hold is read
for a whole batch in one query (``Materializer._preload``), and after each checkpoint
the least recently written states beyond the budget are dropped: every state in the
cache is also in the store by then, so dropping one loses nothing.

Written by hand: the states are decoded structs the fold loop reads with a plain dict
lookup (a general-purpose LRU cache would put a Python call on every record), and the
budget is in bytes, estimated from the states' JSON, not in entries.
"""

from __future__ import annotations

from itertools import islice

from es_orders.projection import Stored

# Bytes a cached state costs beyond its JSON: the decoded structs, their strings, the dict
# slot. Measured with tracemalloc: 376 bytes per order for states of 190 bytes of JSON.
ENTRY_OVERHEAD = 200
# When over budget, drop down to this fraction of it, so eviction runs once in a while,
# not after every batch.
_LOW_WATER = 0.9


class StateCache:
    """Order states by partition and id, within ``limit_bytes`` (estimated).

    Used by the fold loop's thread only.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._partitions: dict[int, dict[str, Stored]] = {}
        self._entries = 0
        # A running mean of the JSON size of the states written, for the estimate.
        self._mean_json = 200.0
        self.hits = 0
        self.misses = 0

    def partition(self, number: int) -> dict[str, Stored]:
        """The states of one partition: the fold loop reads and writes this dict directly."""
        return self._partitions.setdefault(number, {})

    def drop_partition(self, number: int) -> None:
        self._partitions.pop(number, None)

    def clear(self) -> None:
        self._partitions.clear()

    @property
    def entries(self) -> int:
        return sum(len(states) for states in self._partitions.values())

    @property
    def bytes(self) -> int:
        return int(self.entries * (self._mean_json + ENTRY_OVERHEAD))

    def written(self, number: int, changed: dict[str, Stored], json_bytes: int) -> None:
        """``changed`` was checkpointed (``json_bytes`` of state JSON): keep its states as
        the most recently written of their partition."""
        if not changed:
            return
        states = self._partitions.setdefault(number, {})
        for order_id in changed:
            states.pop(order_id, None)
        states.update(changed)
        weight = min(1.0, len(changed) / 1024)
        self._mean_json += (json_bytes / len(changed) - self._mean_json) * weight

    def shrink(self) -> int:
        """Drop the least recently written states beyond the budget; how many were dropped."""
        per_entry = self._mean_json + ENTRY_OVERHEAD
        entries = self.entries
        if entries * per_entry <= self.limit_bytes:
            return 0
        keep = int(self.limit_bytes * _LOW_WATER / per_entry)
        excess = entries - keep
        dropped = 0
        # Each partition gives up its share, oldest first (dicts keep insertion order,
        # and ``written`` moves a state to the end).
        for states in self._partitions.values():
            share = min(len(states), -(-excess * len(states) // entries))
            for order_id in list(islice(states, share)):
                del states[order_id]
            dropped += share
        return dropped
