"""Names of the orchestrator's Ray actors (one namespace per deployment, so the dashboard reads as the system)."""

from __future__ import annotations

SAGA_COORDINATOR_NAME = "saga-coordinator"
SLA_POLICY_NAME = "sla-policy"


def router_name(index: int) -> str:
    return f"router-{index}"


def worker_name(worker_type: str, index: int) -> str:
    return f"worker:{worker_type}:{index}"
