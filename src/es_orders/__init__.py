"""es-orders: event-sourced orders on Apache Kafka, with a changelog-backed state store."""

__version__ = "0.1.0"
