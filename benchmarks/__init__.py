"""Benchmarks: load generators that measure a running (or self-started) orchestrator."""
