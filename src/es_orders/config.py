"""One frozen settings object, read from ``ES_ORDERS_*`` environment variables.

CLI flags win over the environment: the CLI builds the object with
``Settings(**overrides)``, and pydantic-settings gives init arguments precedence.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The largest request body the command service reads (its bodies are a few hundred bytes).
DEFAULT_MAX_BODY_BYTES = 65_536


class Settings(BaseSettings):
    """Every knob of es-orders; see docs/architecture.md, "Configuration"."""

    model_config = SettingsConfigDict(
        env_prefix="ES_ORDERS_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    events_topic: str = "es-orders"
    state_topic: str = "es-orders-state"
    dlq_topic: str = "es-orders-dlq"
    application_id: str = "hello-es-streams"
    command_application_id: str = "es-orders-command"
    partitions: int = Field(default=3, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=32)
    state_dir: Path = Path(".es-orders/state")
    query_port: int = Field(default=8887, ge=0, le=65535)
    command_port: int = Field(default=8886, ge=0, le=65535)
    simulator_rate: float = Field(default=1.0, ge=0.0, le=100_000.0)
    host: str = "127.0.0.1"
    # Where the other query instances reach this one (GET /orders/{id} forwarded to the
    # instance that holds the key); default http://HOST:PORT.
    advertised_url: str | None = None
    api_token: str | None = None
    # A write with a larger body is refused with 413 payload-too-large, unread.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1, le=2**31)
    # The longest a command may take, from its arrival: waiting for its order's turn and
    # for the broker's acknowledgement. Past it the client gets a 503 with Retry-After
    # (a partition without a leader, or without enough in-sync replicas, would otherwise
    # hold it for librdkafka's whole message timeout).
    command_timeout_s: float = Field(default=5.0, gt=0.0, le=300.0)
    # Fold worker processes of the query service, each a member of its consumer group.
    workers: int = Field(default=1, ge=1, le=64)
    # Records a fold worker folds and checkpoints at most at once (what the consumer has
    # ready, up to this): larger batches spread the per-batch costs, smaller ones hold
    # less memory in flight.
    max_batch: int = Field(default=50_000, ge=1, le=1_000_000)
    # Each fold worker's cache of order states, in MiB (runtime/cache.py).
    cache_mb: float = Field(default=64.0, ge=1.0, le=1_048_576.0)
    # The query service keeps every order's events in its stores, for GET
    # /orders/{id}/events, ?version= and ?as_of= (ES_ORDERS_HISTORY=off: latest states only).
    history: bool = True
    # GET /changes (query/changes.py): a comment line after this many seconds without an
    # event, so proxies and clients see the stream alive; the events a stream holds for a
    # client at most (past it the client is too slow and is disconnected); streams at once.
    changes_heartbeat_s: float = Field(default=15.0, gt=0.0, le=3600.0)
    changes_queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    changes_max_streams: int = Field(default=64, ge=1, le=10_000)
    # Extra librdkafka properties: ES_ORDERS_KAFKA__SECURITY_PROTOCOL=SASL_SSL.
    kafka: dict[str, str] = Field(default_factory=dict)

    @field_validator("advertised_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://10.0.0.5:8887")
        return value

    @field_validator("kafka", mode="before")
    @classmethod
    def _librdkafka_names(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {str(k).lower().replace("_", "."): str(v) for k, v in value.items()}

    @property
    def command_state_topic(self) -> str:
        """The command service's own changelog: its view of the orders."""
        return f"{self.events_topic}-command-state"

    @property
    def members_topic(self) -> str:
        """The compacted topic where the query instances say which partitions they hold."""
        return f"{self.application_id}-members"

    @property
    def command_members_topic(self) -> str:
        """The same for the command instances."""
        return f"{self.command_application_id}-members"

    @property
    def idempotency_topic(self) -> str:
        """The compacted topic of the first outcome of each request with an Idempotency-Key."""
        return f"{self.command_application_id}-idempotency"

    def query_url(self) -> str:
        """Where other instances reach this query instance: --advertised-url, or
        http://HOST:PORT (the machine's name when HOST is a wildcard address)."""
        return self._url(self.query_port)

    def command_url(self) -> str:
        """Where other command instances reach this one (as ``query_url``)."""
        return self._url(self.command_port)

    def _url(self, port: int) -> str:
        if self.advertised_url:
            return self.advertised_url.rstrip("/")
        host = self.host
        if host in {"", "0.0.0.0", "::"}:
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka settings for a client: bootstrap servers, pass-through extras, overrides."""
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(self.kafka)
        config.update(overrides)
        return config
