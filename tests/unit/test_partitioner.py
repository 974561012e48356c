"""The Java client's murmur2 partitioner, checked against Kafka's own test vectors."""

from __future__ import annotations

import pytest

from es_orders.kafka.partitioner import murmur2, partition_for

# From Apache Kafka's UtilsTest.testMurmur2.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_murmur2_equals_kafkas(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_every_key_lands_in_a_partition_of_the_topic() -> None:
    for n in range(1000):
        assert 0 <= partition_for(str(n).encode(), 3) < 3
    assert partition_for(b"21", 1) == 0
