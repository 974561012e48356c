"""Thin adapters over confluent-kafka that speak in es-orders errors, not KafkaException."""
