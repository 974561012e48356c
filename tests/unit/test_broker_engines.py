"""Choosing a broker engine, and the Apache Kafka configuration es-orders generates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from es_orders.brokers import choose_engine
from es_orders.brokers.jars import _java_major, cached_classpath, kafka_version
from es_orders.brokers.kafka import KafkaNode, _new_cluster_id, _server_properties
from es_orders.errors import BrokerError

REPO = Path(__file__).parents[2]


@pytest.fixture
def no_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "")


def test_docker_compose_runs_the_kafka_release_the_tests_run() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    images = re.findall(r"image:\s*apache/kafka:(\S+)", compose)
    assert images == [kafka_version()]
    assert kafka_version().startswith("4.")


@pytest.mark.parametrize(
    ("shown", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_402"', 8),
        ("no version here", None),
    ],
)
def test_java_versions_are_read_as_java_prints_them(shown: str, major: int | None) -> None:
    assert _java_major(shown) == major


@pytest.mark.usefixtures("no_java")
def test_auto_falls_back_to_tansu_without_java_and_says_why() -> None:
    choice = choose_engine("auto")

    assert choice.engine == "tansu"
    assert "Java" in choice.reason


@pytest.mark.usefixtures("no_java")
def test_kafka_without_java_is_an_error_that_names_what_is_missing() -> None:
    with pytest.raises(BrokerError, match="no Java found"):
        choose_engine("kafka")


@pytest.mark.usefixtures("no_java")
def test_auto_does_not_fall_back_for_what_only_kafka_can_do(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="Java"):
        choose_engine("auto", nodes=3)
    with pytest.raises(BrokerError, match="Java"):
        choose_engine("auto", data_dir=tmp_path)


def test_tansu_refuses_a_cluster_and_a_data_dir(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="one node only"):
        choose_engine("tansu", nodes=3)
    with pytest.raises(BrokerError, match="memory only"):
        choose_engine("tansu", data_dir=tmp_path)


def test_a_cache_without_its_completion_marker_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ES_ORDERS_CACHE_DIR", str(tmp_path))
    lib = tmp_path / f"kafka-{kafka_version()}" / "lib"
    lib.mkdir(parents=True)
    (lib / f"kafka_2.13-{kafka_version()}.jar").write_bytes(b"half a copy")
    assert cached_classpath() is None

    (lib.parent / "complete").write_text("a hash of another pom")
    assert cached_classpath() is None


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_a_three_node_cluster_replicates_everything_and_needs_two_in_sync(tmp_path: Path) -> None:
    node = KafkaNode(2, 19093, 29093, tmp_path / "node-2")
    voters = "1@127.0.0.1:29092,2@127.0.0.1:29093,3@127.0.0.1:29094"

    settings = _properties(_server_properties(node, voters, 3))

    assert settings["node.id"] == "2"
    assert settings["process.roles"] == "broker,controller"
    assert settings["controller.quorum.voters"] == voters
    assert settings["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19093"
    assert settings["default.replication.factor"] == "3"
    assert settings["offsets.topic.replication.factor"] == "3"
    assert settings["min.insync.replicas"] == "2"
    assert settings["transaction.state.log.min.isr"] == "2"
    assert settings["auto.create.topics.enable"] == "false"
    assert settings["log.dirs"] == str(tmp_path / "node-2" / "data")


def test_one_node_needs_only_itself_in_sync(tmp_path: Path) -> None:
    node = KafkaNode(1, 9092, 9093, tmp_path)

    settings = _properties(_server_properties(node, "1@127.0.0.1:9093", 1))

    assert settings["min.insync.replicas"] == "1"
    assert settings["offsets.topic.replication.factor"] == "1"


def test_cluster_ids_are_kraft_uuids() -> None:
    ids = {_new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id) for cluster_id in ids)
