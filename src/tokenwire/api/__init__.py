"""HTTP API (FastAPI): conversations for their owner, health probes."""
