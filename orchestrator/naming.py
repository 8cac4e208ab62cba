"""Names of the orchestrator's Ray actors (one namespace per deployment, so the dashboard reads as the system)."""

from __future__ import annotations

ROUTER_NAME = "router"
SAGA_COORDINATOR_NAME = "saga-coordinator"
SLA_POLICY_NAME = "sla-policy"


def worker_name(worker_type: str, index: int) -> str:
    return f"worker:{worker_type}:{index}"
