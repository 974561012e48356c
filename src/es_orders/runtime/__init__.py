"""The partition-aware materializer: fold a topic into per-partition SQLite stores,
replicate changed rows to a compacted changelog, checkpoint, restore on assignment."""
