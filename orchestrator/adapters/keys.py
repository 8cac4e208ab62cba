"""Every Redis key and stream name the orchestrator uses, built in one place."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ROUTER_GROUP = "routers"
ROUTER_CONSUMER = "router-0"  # one router; a restarted router re-reads the same consumer's pending entries


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    @property
    def tasks(self) -> str:
        """The task stream (the specification's `mcp_tasks`)."""
        return f"{self.prefix}:mcp_tasks"

    @property
    def active(self) -> str:
        """Counter of accepted, unfinished tasks: the backpressure gauge."""
        return f"{self.prefix}:active"

    @property
    def finished(self) -> str:
        """Pub/sub channel announcing task ids that reached a final state."""
        return f"{self.prefix}:finished"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"

    @property
    def workers(self) -> str:
        """Hash: worker name → where it runs (pid, node), refreshed by its heartbeats."""
        return f"{self.prefix}:workers"

    @property
    def dead_letters(self) -> str:
        """Stream of tasks given up on, with the reason."""
        return f"{self.prefix}:dead_letters"

    def idempotency(self, key: str, tenant: str | None = None) -> str:
        """Where an idempotency key maps to its task: per tenant, so tenants cannot find each other's tasks
        (tenant names cannot hold ':' or '@', so the two forms never meet)."""
        return f"{self.prefix}:idem@{tenant}:{key}" if tenant else f"{self.prefix}:idem:{key}"

    def events(self, task_id: str) -> str:
        """The task's event stream: every state change and progress report, replayable."""
        return f"{self.prefix}:events:{task_id}"

    def checkpoints(self, task_id: str) -> str:
        """The task's checkpoint stream (bounded); the latest is also kept on the record."""
        return f"{self.prefix}:ckpt:{task_id}"

    def of_provider(self, provider: str, key_fingerprint: str) -> list[str]:
        """The KEYS of the provider gate's scripts: the account's budgets (hash), its calls in flight
        (sorted set of leases), the provider's circuit breaker (hash) and the totals (outcome counts)."""
        account = f"{self.prefix}:provider:{provider}:{key_fingerprint}"
        return [account, f"{account}:inflight", f"{self.prefix}:provider:{provider}:breaker", self.totals]

    def saga(self, saga_id: str) -> str:
        """The saga's state (JSON), rewritten after every transition."""
        return f"{self.prefix}:saga:{saga_id}"

    @property
    def active_sagas(self) -> str:
        """Set of unfinished saga ids: what a restarted coordinator resumes."""
        return f"{self.prefix}:sagas:active"

    @property
    def cancelled_sagas(self) -> str:
        """Set of saga ids a caller asked to cancel (durable: a restarted coordinator still sees it)."""
        return f"{self.prefix}:sagas:cancel"

    def saga_idempotency(self, key: str, tenant: str | None = None) -> str:
        return f"{self.prefix}:saga_idem@{tenant}:{key}" if tenant else f"{self.prefix}:saga_idem:{key}"

    @property
    def tenant_active(self) -> str:
        """Hash: tenant → its accepted, unfinished tasks (what `max_active_tasks` quotas are checked against)."""
        return f"{self.prefix}:tenants:active"

    @property
    def tenant_submits(self) -> str:
        """Hash: tenant → the theoretical arrival time of its next submit (the `submits_per_s` meter, GCRA)."""
        return f"{self.prefix}:tenants:submits"

    @property
    def saga_dead_letters(self) -> str:
        """Stream of compensations given up on, with the reason: they need a human."""
        return f"{self.prefix}:saga_dead_letters"

    def artifact(self, name: str) -> list[str]:
        """An artifact's versions (hash: version → content), its live version and its publications
        (hash: publication id → version, so a retried publish does not add a version)."""
        base = f"{self.prefix}:artifact:{name}"
        return [f"{base}:versions", f"{base}:live", f"{base}:published"]

    @property
    def pool_sizes(self) -> str:
        """Hash: worker type → workers wanted (set by control or the SLA policy; survives router restarts)."""
        return f"{self.prefix}:pool_sizes"

    @property
    def paused_pools(self) -> str:
        """Set of worker types whose queued tasks are not dispatched."""
        return f"{self.prefix}:paused_pools"

    def mcp_session(self, session_id: str) -> str:
        """An MCP session (its negotiated protocol version), shared by every ingress replica."""
        return f"{self.prefix}:mcp_session:{session_id}"

    @property
    def sla_targets(self) -> str:
        """Hash: worker type → SLA targets set through `control` (JSON); they override the settings."""
        return f"{self.prefix}:sla_targets"

    @property
    def sla_state(self) -> str:
        """Hash: worker type → the SLA policy's latest measurement and decision (JSON)."""
        return f"{self.prefix}:sla_state"

    @property
    def audit(self) -> str:
        """Stream of operator actions (control, inject): who, what, when."""
        return f"{self.prefix}:audit"

    @property
    def totals(self) -> str:
        """Hash of counters since the start (the same fields as a minute's, plus provider outcomes):
        what /metrics exports as Prometheus counters."""
        return f"{self.prefix}:totals"

    def stats(self, minute: int, tenant: str | None = None) -> str:
        """Hash of analytics counters of finished tasks, one per minute (unix time // 60): of all tasks, or
        of one tenant's."""
        return f"{self.prefix}:stats:{minute}" + (f"@{tenant}" if tenant else "")

    def provider_waiting(self, provider: str) -> str:
        """Sorted set of calls waiting on a provider's limits (permit → expiry): what the SLA policy reads
        to tell a provider-bound pool (more workers would only wait too)."""
        return f"{self.prefix}:provider:{provider}:waiting"

    def of_task(self, task_id: str) -> list[str]:
        """The KEYS every task script takes, in this order."""
        return [self.task(task_id), self.tasks, self.active, self.finished, self.events(task_id),
                self.checkpoints(task_id), self.dead_letters, self.tenant_active]

    def of_children(self, child_ids: Iterable[str]) -> list[str]:
        """A (record, events) pair per fanout child, after a script's other KEYS."""
        return [key for child in child_ids for key in (self.task(child), self.events(child))]
