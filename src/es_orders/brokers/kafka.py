"""Apache Kafka in KRaft mode, one node or a cluster of three, from its Maven Central jars.

Each node is a JVM running ``kafka.Kafka`` on a generated ``server.properties``, as
broker and controller at once (combined mode, as Kafka's own quickstart runs it), with
its data, config and log under ``<data dir>/node-<id>/``. The storage is formatted with
Kafka's own storage tool the first time; a data directory given by the caller survives a
stop, so a restart keeps the topics. Without one, a temporary directory is used and
removed after a clean stop (kept, with its logs, after a failure).

The settings differ from Kafka's defaults only where one laptop needs it; each is
explained where it is set (``_server_properties``).
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from es_orders.brokers.common import (
    LOOPBACK,
    Broker,
    PortTakenError,
    accepts_connections,
    free_port,
    free_ports,
    log_tail,
    port_is_free,
    wait_for_cluster,
)
from es_orders.brokers.jars import KafkaRuntime, kafka_runtime
from es_orders.errors import BrokerError
from es_orders.processes import RunDirectory, spawn, stop, stop_all

_log = logging.getLogger(__name__)

_CLUSTER_FILE = "cluster.json"
_FORMAT_TIMEOUT = 120.0
_LOG4J2 = """\
# Written by es-orders: the broker logs to its stdout, which goes to broker.log.
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
# One line per partition per state change: thousands for a test suite's topics.
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def _new_cluster_id() -> str:
    """A KRaft cluster id: a UUID in URL-safe base64, as ``kafka-storage random-uuid`` prints.

    Like Kafka's own, never one that starts with "-": a command line would take it for a flag.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaNode:
    """One JVM of the cluster: broker and controller, its own ports and directory."""

    def __init__(self, node_id: int, port: int, controller_port: int, directory: Path) -> None:
        self.node_id = node_id
        self.port = port
        self.controller_port = controller_port
        self.directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log_path(self) -> Path:
        return self.directory / "broker.log"

    @property
    def bootstrap_server(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def formatted(self) -> bool:
        return (self.directory / "data" / "meta.properties").exists()

    def spawn(self, runtime: KafkaRuntime, heap_mb: int) -> None:
        if self.running:
            raise BrokerError(f"Kafka node {self.node_id} is already running")
        if not port_is_free(self.port):
            raise PortTakenError(
                f"cannot start Kafka node {self.node_id}: port {self.port} on {LOOPBACK} is taken"
            )
        argv = [
            runtime.java,
            f"-Xms{min(heap_mb, 256)}m",
            f"-Xmx{heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            "-cp",
            runtime.classpath,
            "kafka.Kafka",
            str(self.config_path),
        ]
        try:
            self._process = spawn(argv, log_path=self.log_path, name=f"kafka node {self.node_id}")
        except OSError as exc:
            raise BrokerError(f"cannot run {runtime.java}: {exc}") from exc
        _log.info(
            "kafka node starting node_id=%s pid=%s port=%s log=%s",
            self.node_id,
            self._process.pid,
            self.port,
            self.log_path,
        )

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    def stop(self, timeout: float) -> int | None:
        if self._process is None:
            return None
        return stop(self._process, f"kafka node {self.node_id}", timeout)

    def kill(self) -> None:
        """SIGKILL: the node dies at once, as in a crash, and is waited for."""
        if self._process is not None and self._process.poll() is None:
            _log.info("kafka node killed node_id=%s pid=%s", self.node_id, self._process.pid)
            self._process.kill()
            self._process.wait()


class KafkaCluster(Broker):
    """A running Apache Kafka cluster (KRaft) of one or three nodes on the loopback interface."""

    engine = "kafka"

    def __init__(
        self,
        runtime: KafkaRuntime,
        cluster_id: str,
        nodes: list[KafkaNode],
        data_dir: Path,
        *,
        owns_data_dir: bool,
    ) -> None:
        self.runtime = runtime
        self.cluster_id = cluster_id
        self.nodes = nodes
        self.data_dir = data_dir
        self._owns_data_dir = owns_data_dir
        self._heap_mb = 1024 if len(nodes) == 1 else 512

    @classmethod
    def start(
        cls,
        port: int | None = None,
        *,
        nodes: int = 1,
        data_dir: Path | None = None,
        timeout: float = 120.0,
        runtime: KafkaRuntime | None = None,
    ) -> KafkaCluster:
        """Start ``nodes`` nodes on consecutive ports from ``port`` (None or 0: free ones).

        ``data_dir`` keeps the cluster's data across stops (a temporary one if None).
        Raises ``BrokerError`` (naming the log to read) if Java or the jars are missing,
        a port is taken, a node exits, or the cluster is not ready within ``timeout``.
        """
        if nodes not in (1, 3):
            raise BrokerError(f"a Kafka cluster here has 1 or 3 nodes, not {nodes}")
        runtime = runtime or kafka_runtime()
        first = port or free_ports(nodes)
        for number in range(nodes):
            if not port_is_free(first + number):
                raise PortTakenError(
                    f"cannot start Apache Kafka: port {first + number} on {LOOPBACK} is taken "
                    "(another broker still running? choose another --port)"
                )
        owns = data_dir is None
        # A temporary one records our PID: a run killed before its cleanup leaves its
        # data behind, and the next run removes it.
        directory = RunDirectory("es-orders-kafka-").path if data_dir is None else data_dir
        directory.mkdir(parents=True, exist_ok=True)
        cluster_id = _cluster_id(directory, nodes)
        members = [
            KafkaNode(number + 1, first + number, free_port(), directory / f"node-{number + 1}")
            for number in range(nodes)
        ]
        cluster = cls(runtime, cluster_id, members, directory, owns_data_dir=owns)
        try:
            cluster._write_configs()
            cluster._format()
            for node in members:
                node.spawn(runtime, cluster._heap_mb)
            cluster.wait_until_ready(timeout)
        except BaseException:
            cluster.stop(timeout=10.0, keep_data=True)
            raise
        _log.info(
            "kafka ready version=%s nodes=%s bootstrap_servers=%s data_dir=%s",
            runtime.kafka_version,
            nodes,
            cluster.bootstrap_servers,
            directory,
        )
        return cluster

    def _write_configs(self) -> None:
        voters = ",".join(f"{n.node_id}@{LOOPBACK}:{n.controller_port}" for n in self.nodes)
        for node in self.nodes:
            (node.directory / "data").mkdir(parents=True, exist_ok=True)
            node.config_path.write_text(_server_properties(node, voters, len(self.nodes)))
            (node.directory / "log4j2.properties").write_text(_LOG4J2)

    def _format(self) -> None:
        """Format every node's storage that is not yet, with Kafka's storage tool, in parallel."""
        todo = [node for node in self.nodes if not node.formatted()]
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            list(pool.map(self._format_node, todo))

    def _format_node(self, node: KafkaNode) -> None:
        argv = [self.runtime.java, "-cp", self.runtime.classpath, "kafka.tools.StorageTool"]
        argv += ["format", f"--cluster-id={self.cluster_id}", f"--config={node.config_path}"]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_FORMAT_TIMEOUT, check=False
        )
        if done.returncode != 0:
            raise BrokerError(
                f"Kafka's storage tool could not format node {node.node_id} in "
                f"{node.directory}: {(done.stdout + done.stderr).strip()[-2000:]}"
            )

    def _exited(self) -> str | None:
        dead = [n for n in self.nodes if n.returncode is not None]
        if not dead:
            return None
        node = dead[0]
        return (
            f"Kafka node {node.node_id} exited with code {node.returncode}; its log "
            f"{node.log_path} ends with:\n{log_tail(node.log_path)}"
        )

    def wait_until_ready(self, timeout: float = 120.0) -> None:
        """Wait until every node is registered and the cluster answers with its own id."""
        try:
            wait_for_cluster([n.port for n in self.nodes], self.cluster_id, timeout, self._exited)
        except BrokerError as exc:
            if isinstance(exc, PortTakenError) or self._exited() is not None:
                raise
            logs = ", ".join(str(n.log_path) for n in self.nodes)
            raise BrokerError(f"Apache Kafka: {exc}; the logs: {logs}") from None

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_server for node in self.nodes)

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def log_path(self) -> Path:
        return self.nodes[0].log_path

    @property
    def pids(self) -> list[int]:
        return [pid for n in self.nodes if n.running and (pid := n.pid) is not None]

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def kind(self) -> str:
        where = "temporary data" if self._owns_data_dir else f"data in {self.data_dir}"
        nodes = "one node" if len(self.nodes) == 1 else f"{len(self.nodes)} nodes"
        return f"Apache Kafka {self.runtime.kafka_version} (KRaft, {nodes}, {where})"

    def exit_report(self) -> str:
        return self._exited() or "every Kafka node is running"

    def node(self, node_id: int) -> KafkaNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise BrokerError(f"this cluster has no node {node_id}")

    def leader_of(self, topic: str, partition: int, timeout: float = 10.0) -> int:
        """The node id that leads ``topic``'s ``partition`` now (-1: none)."""
        servers = ",".join(n.bootstrap_server for n in self.nodes if n.running)
        admin = AdminClient({"bootstrap.servers": servers})
        try:
            metadata = admin.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            raise BrokerError(f"cannot read the metadata of {topic}: {exc}") from exc
        return int(metadata.topics[topic].partitions[partition].leader)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would; the others carry on."""
        self.node(node_id).kill()

    def stop_node(self, node_id: int, timeout: float = 30.0) -> int | None:
        """Stop one node cleanly (SIGTERM, controlled shutdown); the others carry on."""
        return self.node(node_id).stop(timeout)

    def start_node(self, node_id: int, timeout: float = 120.0) -> None:
        """Start a stopped or killed node again, on its ports and data, and wait for it."""
        node = self.node(node_id)
        node.spawn(self.runtime, self._heap_mb)
        deadline = time.monotonic() + timeout
        while not accepts_connections(node.port):
            if (problem := self._exited()) is not None:
                raise BrokerError(problem)
            if time.monotonic() > deadline:
                raise BrokerError(f"Kafka node {node_id} did not listen within {timeout:g} s")
            time.sleep(0.1)
        self.wait_until_ready(max(1.0, deadline - time.monotonic()))

    def stop(self, timeout: float = 30.0, *, keep_data: bool = False) -> int | None:
        """Stop every node together and wait; remove a temporary data dir after a clean stop.

        Returns 0 when every node exited cleanly, else the first other exit code. Safe to
        call more than once.
        """
        stop_all([(n.process, f"kafka node {n.node_id}") for n in self.nodes if n.process], timeout)
        codes = [node.returncode for node in self.nodes]
        failed = [c for c in codes if c not in (None, 0, 143)]
        code = failed[0] if failed else 0
        if self._owns_data_dir and not failed and not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        elif failed:
            _log.warning("kafka stopped with exit codes %s; logs kept in %s", codes, self.data_dir)
        return code

    def __repr__(self) -> str:
        return f"KafkaCluster(bootstrap_servers={self.bootstrap_servers!r}, running={self.running})"


def _cluster_id(directory: Path, nodes: int) -> str:
    """The id of the cluster whose data lives in ``directory``; a new one for an empty dir."""
    path = directory / _CLUSTER_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("nodes") != nodes:
            raise BrokerError(
                f"{directory} holds a Kafka cluster of {saved.get('nodes')} node(s), not "
                f"{nodes}: use another --data-dir"
            )
        return str(saved["cluster_id"])
    cluster_id = _new_cluster_id()
    path.write_text(json.dumps({"cluster_id": cluster_id, "nodes": nodes}))
    return cluster_id


def _server_properties(node: KafkaNode, voters: str, nodes: int) -> str:
    replicas = nodes
    min_isr = 2 if nodes >= 3 else 1
    settings = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{LOOPBACK}:{node.port},CONTROLLER://{LOOPBACK}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": node.directory / "data",
        # Every internal topic is replicated to every node, and a write needs two of three.
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        # 50 partitions each by default: seconds of start-up on two cores, for nothing here.
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.num.partitions": 10,
        # Topics are created on purpose, with explicit configs (kafka/admin.py).
        "auto.create.topics.enable": "false",
        # A group's first join does not wait 3 s for more members to arrive.
        "group.initial.rebalance.delay.ms": 0,
        # Tests restart group members often; sessions of 1 s or more are allowed (Kafka's
        # default floor is 6 s; the services default to 6 s anyway).
        "group.min.session.timeout.ms": 1000,
        # A node that stops heartbeating is fenced after 4 s, not 9 s: its partitions get
        # new leaders sooner, within the 6 s sessions es-orders' consumers keep, so a
        # node's crash does not also cost every group its assignment (a production
        # cluster on Kafka's 9 s needs longer consumer sessions: README, Fault tests).
        "broker.session.timeout.ms": 4000,
        "broker.heartbeat.interval.ms": 500,
        # Members using the consumer group protocol (KIP-848) get the timings classic
        # members get from the services (6 s sessions, 1 s heartbeats), not 45 s and 5 s:
        # the benchmark compares the two protocols on equal terms.
        "group.consumer.heartbeat.interval.ms": 1000,
        "group.consumer.min.heartbeat.interval.ms": 1000,
        "group.consumer.session.timeout.ms": 6000,
        "group.consumer.min.session.timeout.ms": 1000,
        # The cleaner looks for dirty compacted logs every second, not every 15 s, so a
        # changelog's compaction can be seen within a test.
        "log.cleaner.backoff.ms": 1000,
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())
