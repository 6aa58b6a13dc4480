"""beam_zdl: zero-data-loss Kafka ingestion for Apache Beam's Python SDK."""

__version__ = "0.1.0"
