"""The members directory: who owns a partition, as the members topic's records say."""

from __future__ import annotations

from es_orders.query.members import (
    MEMBER_TTL,
    Directory,
    MemberPartition,
    MemberRecord,
    decode_member,
    encode_member,
)

NOW = 1_800_000_000.0


def record(instance: str, *partitions: int, at: float = NOW, phase: str = "caught-up") -> bytes:
    return encode_member(
        MemberRecord(
            instance=instance,
            url=f"http://{instance}:8887",
            started_at=NOW - 60,
            published_at=at,
            ready=True,
            partitions=tuple(MemberPartition(p, phase, 10, 12) for p in partitions),
        )
    )


def owner_url(directory: Directory, partition: int, exclude: str = "me") -> str | None:
    owner = directory.owner(partition, exclude=exclude, now=NOW)
    return None if owner is None else owner.record.url


def test_a_record_round_trips_and_reports_lag() -> None:
    decoded = decode_member(record("a", 0, 2))

    assert decoded.url == "http://a:8887"
    assert [p.partition for p in decoded.partitions] == [0, 2]
    assert decoded.partitions[0].lag == 2
    assert MemberPartition(1, "restoring").lag is None


def test_each_partition_belongs_to_the_member_that_claims_it() -> None:
    directory = Directory()
    directory.apply(b"a", record("a", 0, 1), 0)
    directory.apply(b"b", record("b", 2), 1)

    assert owner_url(directory, 0) == "http://a:8887"
    assert owner_url(directory, 2) == "http://b:8887"
    assert owner_url(directory, 3) is None


def test_the_latest_claim_wins_while_the_old_holder_has_not_said_it_let_go() -> None:
    directory = Directory()
    directory.apply(b"a", record("a", 0, 1), 0)
    directory.apply(b"b", record("b", 1), 5)  # the group moved partition 1 to b
    directory.apply(b"a", record("a", 0, 1), 9)  # a's heartbeat, not yet revoked

    assert owner_url(directory, 1) == "http://b:8887"
    assert owner_url(directory, 0) == "http://a:8887"


def test_a_claim_given_up_and_taken_again_counts_from_the_new_record() -> None:
    directory = Directory()
    directory.apply(b"a", record("a", 1), 0)
    directory.apply(b"b", record("b", 1), 1)
    directory.apply(b"a", record("a"), 2)  # a let go
    directory.apply(b"a", record("a", 1), 3)  # and was given it again, after b

    assert owner_url(directory, 1) == "http://a:8887"


def test_a_member_not_heard_from_within_the_ttl_owns_nothing() -> None:
    directory = Directory()
    directory.apply(b"a", record("a", 0, at=NOW - MEMBER_TTL - 0.1), 0)
    directory.apply(b"b", record("b", 1, at=NOW - MEMBER_TTL + 0.5), 1)

    assert owner_url(directory, 0) is None
    assert owner_url(directory, 1) == "http://b:8887"
    assert [m.record.instance for m in directory.live(NOW)] == ["b"]


def test_a_tombstone_removes_the_member() -> None:
    directory = Directory()
    directory.apply(b"a", record("a", 0), 0)
    directory.apply(b"a", None, 1)

    assert owner_url(directory, 0) is None
    assert directory.live(NOW) == []


def test_the_asking_instance_is_never_its_own_owner() -> None:
    directory = Directory()
    directory.apply(b"me", record("me", 0), 0)

    assert owner_url(directory, 0, exclude="me") is None
    assert owner_url(directory, 0, exclude="other") == "http://me:8887"


def test_a_record_that_is_no_member_is_ignored() -> None:
    directory = Directory()
    directory.apply(b"a", record("a", 0), 0)
    directory.apply(b"a", b"not json", 1)

    assert owner_url(directory, 0) == "http://a:8887"
