"""Every Redis key, channel and stream name the orchestrator uses, built in one place.

Tasks live in shards. Every key of shard n carries the hash tag `{<prefix>:<n>}`, so every script touching
one shard's keys runs on one Redis Cluster slot (and the same code runs on one server). A task id names its
shard (`<n>-<token>`), so any process finds a task's keys from its id alone. Other keys carry a tag of their
own per family (sagas, a provider, an artifact) or are single keys used one command at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKER_GROUP = "workers"  # the consumer group of every shard's delivery stream; each worker is a consumer
PRIORITIES = range(11)  # 0 (bulk) … 10 (urgent)


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys of one shard (all in one hash slot)."""

    prefix: str
    shard: int

    @property
    def tag(self) -> str:
        """Every key of the shard starts with this; scripts build per-task keys from it."""
        return f"{{{self.prefix}:{self.shard}}}"

    def task(self, task_id: str) -> str:
        """The task's record: one JSON string (see `orchestrator.codec`)."""
        return f"{self.tag}:t:{task_id}"

    def keyed(self, tenant: str | None, idempotency_key: str) -> str:
        """The id of the tenant's task accepted with this idempotency key (submit.lua sets it, with a ttl)."""
        return f"{self.tag}:k:{tenant or ''}:{idempotency_key}"

    def level(self, worker_type: str, priority: int) -> str:
        """Sorted set of the queued tasks of one worker type at one priority, in fair order (score)."""
        return f"{self.tag}:q:{worker_type}:{priority}"

    def fair(self, worker_type: str, priority: int) -> str:
        """Sorted set: tenant → the virtual time its next task at this level starts at (fair queueing)."""
        return f"{self.tag}:f:{worker_type}:{priority}"

    def due(self, worker_type: str) -> str:
        """Sorted set of the delayed (`scheduled`) tasks of one worker type, by the time they become ready (ms)."""
        return f"{self.tag}:due:{worker_type}"

    def input_deadlines(self, worker_type: str) -> str:
        """Sorted set of the tasks of one worker type waiting for input (`input_required`) that have a deadline,
        by it (ms): come the deadline, a router queues them for a worker to fail (see due.lua)."""
        return f"{self.tag}:idl:{worker_type}"

    @property
    def clocks(self) -> str:
        """Hash: `<worker type>:<priority>` → the level's virtual time (of the task popped last); `seq` → the
        arrival counter that breaks ties."""
        return f"{self.tag}:clock"

    def victims(self, worker_type: str) -> str:
        """Sorted set of the worker type's running tasks a preemption may pick, best victim first."""
        return f"{self.tag}:run:{worker_type}"

    @property
    def running(self) -> str:
        """Sorted set of every running task of the shard, by start time (what `status` lists)."""
        return f"{self.tag}:running"

    @property
    def stream(self) -> str:
        """The delivery stream: an entry per attempt taken, pending under the worker that took it until the
        attempt ends (consumer group `workers`), so XPENDING shows who holds what."""
        return f"{self.tag}:tasks"

    @property
    def takes(self) -> str:
        """Hash: worker → the sequence number of its last take (a retried take is recognised)."""
        return f"{self.tag}:takes"

    @property
    def active(self) -> str:
        """Counter of the shard's accepted, unfinished tasks (backpressure)."""
        return f"{self.tag}:active"

    @property
    def tenant_active(self) -> str:
        """Hash: tenant → its accepted, unfinished tasks in this shard (a tenant with a quota has one shard)."""
        return f"{self.tag}:tenants"

    @property
    def tenant_submits(self) -> str:
        """Hash: tenant → the theoretical arrival time of its next submit (the `submits_per_s` meter, GCRA)."""
        return f"{self.tag}:meter"

    def idempotency(self, key: str, tenant: str | None) -> str:
        """Where an idempotency key maps to its task, per tenant (tenant names hold no ':')."""
        return f"{self.tag}:k:{tenant or ''}:{key}"

    @property
    def dead_letters(self) -> str:
        """Stream of the shard's tasks given up on, with the reason."""
        return f"{self.tag}:dead"

    @property
    def outbox(self) -> str:
        """Stream of work for other shards (a parent releasing a child that lives elsewhere), delivered by the
        shard's router at least once; the receiving script is idempotent."""
        return f"{self.tag}:outbox"

    @property
    def lease(self) -> str:
        """The router owning the shard: `<router>:<fencing token>`, with a time to live."""
        return f"{self.tag}:lease"

    @property
    def fence(self) -> str:
        """Counter handing out fencing tokens: each new lease holder gets a larger one."""
        return f"{self.tag}:fence"

    def stats(self, minute: int, tenant: str | None = None) -> str:
        """Hash of analytics counters of the shard's tasks finished in one minute (unix time // 60): of all
        tasks, or of one tenant's."""
        return f"{self.tag}:stats:{minute}" + (f"@{tenant}" if tenant else "")

    @property
    def totals(self) -> str:
        """Hash of counters since the start (the same fields as a minute's): what /metrics exports."""
        return f"{self.tag}:totals"

    # The secondary index `list_tasks` reads (see lua/common.lua `index`): sorted sets of task ids scored by
    # creation time (ms), kept by the very scripts that change a task. Tenant names hold no ':' ('' = none).

    def by_status(self, tenant: str | None, status: str) -> str:
        """Sorted set: the tenant's tasks in one status (a task is in exactly one) → created ms."""
        return f"{self.tag}:ix:{tenant or ''}:s:{status}"

    @property
    def indexed_tenants(self) -> str:
        """Hash: tenant → its tasks in the index (what an admin's listing of every tenant goes through)."""
        return f"{self.tag}:ix:tenants"

    @property
    def index_version(self) -> str:
        """Set once the shard's tasks stored before the indexes existed were indexed (see `migration`)."""
        return f"{self.tag}:ix:version"

    @property
    def index_expiry(self) -> str:
        """Sorted set: `<tenant>:<status>:<task id>` of every finished task → when its record expires (ms); what
        the prune reads to drop expired tasks from the index."""
        return f"{self.tag}:ix:expiry"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    def shard(self, shard: int) -> ShardKeys:
        return ShardKeys(self.prefix, shard)

    def task_channel(self, task_id: str) -> str:
        """Pub/sub channel carrying the task's events live (its history is in its record)."""
        return f"{self.prefix}:ev:{task_id}"

    @property
    def finished(self) -> str:
        """Pub/sub channel announcing task ids (space separated) that reached a final state."""
        return f"{self.prefix}:finished"

    def wake(self, worker_type: str) -> str:
        """Pub/sub channel telling a pool's idle workers that tasks were queued."""
        return f"{self.prefix}:wake:{worker_type}"

    @property
    def urgent(self) -> str:
        """Pub/sub channel telling the pool manager that tasks at the preemption threshold were queued."""
        return f"{self.prefix}:urgent"

    @property
    def control(self) -> str:
        """Pub/sub channel telling workers that a pool was paused or resumed."""
        return f"{self.prefix}:control"

    @property
    def workers(self) -> str:
        """Hash: worker name → where and when it last heartbeated (pid, node, time): what the sweep reads."""
        return f"{self.prefix}:workers"

    @property
    def members(self) -> str:
        """Hash: worker name → its pool and whether it drains, as the pool manager has them (what `status`
        lists; a worker is there from the moment it is planned until it is retired)."""
        return f"{self.prefix}:members"

    @property
    def routers(self) -> str:
        """Hash: router name → when it last renewed its leases (a router gives a shard back to the router that
        prefers it only while that one is alive)."""
        return f"{self.prefix}:routers"

    @property
    def pool_lease(self) -> str:
        """The router managing the pools (spawning, scaling, draining, preempting): `<router>:<token>`."""
        return f"{{{self.prefix}:pools}}:lease"

    @property
    def pool_fence(self) -> str:
        return f"{{{self.prefix}:pools}}:fence"

    # --- schedules: fired by the holder of the pools lease, so they share its tag (the fence is checked in the
    # same script that advances a schedule) -----------------------------------------------------------------

    def schedule(self, schedule_id: str) -> str:
        """Hash: a schedule — `spec` (its definition, JSON), `tenant`, `next_ms` (its next tick), `paused`,
        `last_task`, `fired`, `skipped`, `created_ms`."""
        return f"{{{self.prefix}:pools}}:schedule:{schedule_id}"

    def schedule_runs(self, schedule_id: str) -> str:
        """List: a schedule's latest fires, newest first (`[tick_ms, task_id]`, JSON)."""
        return f"{{{self.prefix}:pools}}:schedule_runs:{schedule_id}"

    @property
    def schedules_due(self) -> str:
        """Sorted set: active schedule id → its next tick (ms): what the firer reads."""
        return f"{{{self.prefix}:pools}}:schedules_due"

    def schedules_of(self, tenant: str | None) -> str:
        """Sorted set: a tenant's schedules → when each was created (ms)."""
        return f"{{{self.prefix}:pools}}:schedules_of:{tenant or ''}"

    @property
    def schedule_tenants(self) -> str:
        """Set: the tenants that have schedules (an admin's listing walks them)."""
        return f"{{{self.prefix}:pools}}:schedule_tenants"

    @property
    def pool_sizes(self) -> str:
        """Hash: worker type → workers wanted (set by control or the SLA policy; survives router restarts)."""
        return f"{self.prefix}:pool_sizes"

    @property
    def paused_pools(self) -> str:
        """Set of worker types whose queued tasks are not taken."""
        return f"{self.prefix}:paused_pools"

    @property
    def scheduled(self) -> str:
        """Pub/sub channel: a delayed task was accepted (the message: its due time, ms); routers wake to promote."""
        return f"{self.prefix}:scheduled"

    def slots(self, kind: str, tenant: str) -> str:
        """Sorted set: a tenant's open connections of one kind (event streams, MCP sessions) → when each slot
        runs out unless refreshed."""
        return f"{self.prefix}:slots:{kind}:{tenant}"

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

    # --- sagas: one tag, so a saga script touches one slot ------------------------------------------

    @property
    def _sagas(self) -> str:
        return f"{{{self.prefix}:sagas}}"

    def saga(self, saga_id: str) -> str:
        """The saga's state (JSON), rewritten after every transition."""
        return f"{self._sagas}:saga:{saga_id}"

    def saga_reruns(self, saga_id: str) -> str:
        """List: the sagas that re-run this one, oldest first (expires with the saga)."""
        return f"{self._sagas}:reruns:{saga_id}"

    @property
    def active_sagas(self) -> str:
        """Set of unfinished saga ids: what a restarted coordinator resumes."""
        return f"{self._sagas}:active"

    @property
    def cancelled_sagas(self) -> str:
        """Set of saga ids a caller asked to cancel (durable: a restarted coordinator still sees it)."""
        return f"{self._sagas}:cancel"

    def saga_idempotency(self, key: str, tenant: str | None = None) -> str:
        return f"{self._sagas}:idem@{tenant or ''}:{key}"

    @property
    def saga_tag(self) -> str:
        """What every saga key starts with (a script builds the keys of the sagas it reads from it)."""
        return self._sagas

    def sagas_by_status(self, tenant: str | None, status: str) -> str:
        """Sorted set: the tenant's sagas in one status → created ms (what `list_sagas` reads)."""
        return f"{self._sagas}:ix:{tenant or ''}:s:{status}"

    @property
    def saga_tenants(self) -> str:
        """Set of the tenants that have sagas (what an admin's listing of every tenant goes through)."""
        return f"{self._sagas}:ix:tenants"

    @property
    def saga_expiry(self) -> str:
        """Sorted set: `<tenant>:<status>:<saga id>` of every finished saga → when its state expires (ms)."""
        return f"{self._sagas}:ix:expiry"

    @property
    def saga_dead_letters(self) -> str:
        """Stream of compensations given up on, with the reason: they need a human."""
        return f"{self._sagas}:dead"

    # --- providers: one tag per provider ------------------------------------------------------------

    def of_provider(self, provider: str, key_fingerprint: str) -> list[str]:
        """The KEYS of the provider gate's scripts: the account's budgets (hash), its calls in flight (sorted
        set of leases), the provider's circuit breaker (hash) and its outcome counters (hash)."""
        tag = f"{{{self.prefix}:p:{provider}}}"
        account = f"{tag}:{key_fingerprint}"
        return [account, f"{account}:inflight", f"{tag}:breaker", f"{tag}:totals"]

    def provider_totals(self, provider: str) -> str:
        return self.of_provider(provider, "")[3]

    def provider_waiting(self, provider: str) -> str:
        """Sorted set of calls waiting on a provider's limits (permit → expiry): what the SLA policy reads to
        tell a provider-bound pool (more workers would only wait too)."""
        return f"{{{self.prefix}:p:{provider}}}:waiting"

    # --- artifacts: one tag per artifact ------------------------------------------------------------

    def artifact(self, name: str, tenant: str | None = None) -> list[str]:
        """A tenant's artifact: its versions (hash: version → content), its live version and its publications
        (hash: publication id → version, so a retried publish does not add a version). Tenants' artifacts of
        one name are distinct (tenant names hold no ':')."""
        base = f"{{{self.prefix}:a:{tenant or ''}:{name}}}"
        return [f"{base}:versions", f"{base}:live", f"{base}:published"]

    # --- API keys created at runtime: one tag, so a key script touches one slot --------------------------

    def api_keys(self) -> dict[str, str]:
        """The KEYS of the key scripts: `records` (hash: a key's hash → its record, JSON; the key itself is never
        stored), `names` (hash: name → hash, of keys not revoked), `revoked` (hash: hash → when), `ends`
        (sorted set: hash → when the key stopped or stops working; what the purge of old keys reads) and
        `version` (counter of changes: a replica reloads the keys when it moved)."""
        tag = f"{{{self.prefix}:keys}}"
        return {name: f"{tag}:{name}" for name in ("records", "names", "revoked", "ends", "version")}

    @property
    def keys_changed(self) -> str:
        """Pub/sub channel announcing a change of the runtime API keys (every ingress replica reloads them)."""
        return f"{self.prefix}:keys_changed"

    @property
    def auth_failures(self) -> str:
        """Hash: reason → failed authentications counted by every replica (what /metrics exports)."""
        return f"{self.prefix}:auth_failures"

    # --- the layout before shards (read once, to migrate) --------------------------------------------

    @property
    def legacy_stream(self) -> str:
        return f"{self.prefix}:mcp_tasks"

    def legacy_task(self, task_id: str) -> str:
        return f"{self.prefix}:task:{task_id}"
