"""Wire models: JSON-RPC params and results, and the task record as clients see it."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from orchestrator.saga import SagaStatus
from orchestrator.settings import Scope, TenantName

JsonObject = dict[str, Any]


class TaskStatus(StrEnum):
    SCHEDULED = "scheduled"  # delayed: becomes queued at its `not_before`
    QUEUED = "queued"
    WAITING = "waiting"  # a fanout child whose parent has not succeeded yet
    RUNNING = "running"
    PREEMPTED = "preempted"  # interrupted for urgent work; queued again to resume from its checkpoint
    INPUT_REQUIRED = "input_required"  # its tool asked for input (`ctx.ask`): no slot held until `provide_input`
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def settled(self) -> bool:
        """Whether waiting for the task is over: it finished, or it waits for someone's input."""
        return self in FINISHED or self is TaskStatus.INPUT_REQUIRED


FINISHED = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Priority = Annotated[int, Field(ge=0, le=10, description="0 (bulk) .. 10 (urgent, preempts)")]
ToolName = Annotated[str, Field(min_length=1, max_length=128, description="a tool from `status`/`rpc.discover`")]
IdempotencyKey = Annotated[
    str, Field(min_length=1, max_length=256, description="a repeated submit with the same key returns the same task")
]
Agent = Annotated[str, Field(min_length=1, max_length=128, description="the submitting agent or tenant")]
WaitSeconds = Annotated[
    float, Field(ge=0, le=3600, description="block up to this many seconds for the result (capped by the server)")
]
NotBefore = Annotated[AwareDatetime | None, Field(
    default=None, description="RFC 3339 with a timezone: the task is `scheduled` until then, then queued (at most "
    "limits.max_delay_s ahead; a time already past queues it at once)")]
DelaySeconds = Annotated[float | None, Field(
    default=None, gt=0, description="like not_before, in seconds from now (at most limits.max_delay_s)")]


class ChildTask(Params):
    """A task that receives its parent's result (in `context.parent_result`) when the parent succeeds."""

    tool: ToolName
    prompt: str | None = Field(default=None, description="v1 style: the prompt; `context` keys are tool options")
    input: JsonObject | None = Field(default=None, description="v2 style: the tool's input")
    priority: Priority | None = Field(default=None, description="defaults to the parent's")
    context: JsonObject = Field(default_factory=dict)


Children = Annotated[list[ChildTask], Field(default_factory=list, description="fanout: run when this task succeeds")]


class RunTaskParams(Params):
    """v1 `run_task`: a prompt plus a free-form context; the tool reads the context keys it knows."""

    tool: ToolName
    prompt: str = Field(description="the task's text input")
    priority: Priority = 5
    context: JsonObject = Field(default_factory=dict, description="free-form; keys the tool's input schema names are its options")
    wait: WaitSeconds | None = None
    idempotency_key: IdempotencyKey | None = None
    agent: Agent | None = None
    not_before: NotBefore
    delay_s: DelaySeconds
    children: Children


class RunTaskParamsV2(Params):
    """v2 `run_task`: a structured `input` validated against the tool's own input schema, and a deadline."""

    tool: ToolName
    input: JsonObject | None = Field(default=None, description="validated against the tool's input schema (see "
                                     "rpc.discover / status); required unless `prompt` is given")
    prompt: str | None = Field(default=None, description="shorthand for input.prompt; without `input`, the call "
                               "reads as v1 (and the specification's example): the `context` keys the tool's input "
                               "schema names are its options")
    priority: Priority = 5
    deadline: AwareDatetime | None = Field(default=None, description="RFC 3339; the task fails if not finished by then")
    context: JsonObject = Field(default_factory=dict)
    wait: WaitSeconds | None = None
    idempotency_key: IdempotencyKey | None = None
    agent: Agent | None = None
    not_before: NotBefore
    delay_s: DelaySeconds
    children: Children


class TaskIdParams(Params):
    task_id: str = Field(min_length=1, max_length=64)


class StatusParams(Params):
    pass


class WhoamiParams(Params):
    pass


class WhoamiResult(BaseModel):
    key: str = Field(description="the key's name (`anonymous` when auth is off)")
    tenant: str | None = None
    scopes: list[Scope] = Field(description="what the key may do; admin implies every scope")
    admin: bool
    auth: bool = Field(description="whether the orchestrator checks keys (false: auth is off, loopback only)")


class ControlParams(Params):
    """Operator actions (admin). Every action that changes something is recorded in the audit log.

    `dead_letters` (count): tasks given up on · `requeue` (task_id): put a dead letter back ·
    `scale` (worker_type, workers): resize a pool (surplus workers drain: no task is lost) ·
    `sla` (worker_type, targets): change a pool's SLA targets, min/max workers included ·
    `drain` (worker): retire one worker after its tasks · `pause` / `resume` (worker_type): stop or
    restart dispatching a pool's queued tasks · `preempt` (task_id): checkpoint and requeue a running
    task · `cancel` (task_id) · `audit_log` (count): the latest operator actions.
    """

    action: Literal["dead_letters", "requeue", "scale", "drain", "pause", "resume", "preempt", "cancel",
                    "audit_log", "sla"]
    task_id: str | None = Field(default=None, min_length=1, max_length=64, description="requeue, preempt, cancel")
    count: int = Field(default=100, ge=1, le=1000, description="dead_letters, audit_log")
    worker_type: str | None = Field(default=None, min_length=1, max_length=64, description="scale, pause, resume")
    workers: int | None = Field(default=None, ge=0, le=1000, description="scale")
    worker: str | None = Field(default=None, min_length=1, max_length=128, description="drain")
    targets: JsonObject | None = Field(default=None, description="sla: SLA target fields to change for worker_type "
                                       "(min_workers, max_workers, queue_wait_p95_s, ...)")


class InjectParams(Params):
    """Admin: `add` a task by hand (v2 run_task params), or `correct` one that has not started yet
    (its priority and/or input). Every injection is recorded in the audit log."""

    action: Literal["add", "correct"]
    task: RunTaskParamsV2 | None = Field(default=None, description="add: the task, as v2 run_task params")
    task_id: str | None = Field(default=None, min_length=1, max_length=64, description="correct")
    priority: Priority | None = Field(default=None, description="correct: the new priority")
    input: JsonObject | None = Field(default=None, description="correct: the new input (checked against the tool)")
    tenant: TenantName | None = Field(default=None, description="add: the tenant the task belongs to (default: "
                                      "the admin key's own)")


class InjectResult(BaseModel):
    action: str
    task_id: str
    status: str
    requeued: bool = Field(default=False, description="correct: the router re-ordered its queued copy")


class AuditEntry(BaseModel):
    id: str
    who: str
    action: str
    details: dict[str, Any]
    time: float


class DeadLetter(BaseModel):
    id: str
    task_id: str
    reason: str
    attempts: int
    time: float


class ControlResult(BaseModel):
    action: str
    dead_letters: list[DeadLetter] | None = None
    requeued: str | None = None
    audit_log: list[AuditEntry] | None = None
    done: bool = True
    status: str | None = Field(default=None, description="cancel: the task's status after the request")
    sla_targets: JsonObject | None = Field(default=None, description="sla: the pool's targets now")


class InputRequest(BaseModel):
    """What a task's tool asked for (`ctx.ask`): an answer checked against `schema`."""

    message: str
    schema_: JsonObject = Field(alias="schema", description="JSON Schema the answer must fit")
    asked_at: float = Field(description="unix seconds")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class ProvideInputParams(Params):
    """Answer a task waiting for input (`input_required`): the answer is checked against the schema the tool asked
    with, stored, and the task queued again once nothing else it asked for is pending."""

    task_id: str = Field(min_length=1, max_length=64)
    input: Any = Field(description="the answer: it must fit the request's schema")
    key: str | None = Field(default=None, min_length=1, max_length=128,
                            description="which request it answers (see `input_requests`); optional when one is "
                            "pending")
    action: Literal["accept", "decline", "cancel"] = Field(
        default="accept", description="decline or cancel: the tool's `ask` raises instead of returning (`input` is "
        "then not checked)")


class ProvideInputResult(BaseModel):
    task_id: str
    key: str
    status: TaskStatus = Field(description="the task's status after the answer: queued once nothing is pending")
    duplicate: bool = Field(default=False, description="the same answer had been delivered before: nothing changed")


class TaskError(BaseModel):
    code: int
    message: str
    retryable: bool = False


class TaskRecord(BaseModel):
    task_id: str
    status: TaskStatus
    tool: str
    worker_type: str
    priority: int
    prompt: str | None = None
    input: JsonObject = Field(default_factory=dict)
    context: JsonObject = Field(default_factory=dict)
    agent: str | None = None
    tenant: str | None = Field(default=None, description="the tenant of the API key that submitted it")
    result: Any = None
    error: TaskError | None = None
    attempts: int = 0
    preemptions: int = 0
    restarts: int = Field(default=0, description="resumptions that started from zero: the tool cannot resume")
    resumed_from: JsonObject | None = Field(default=None, description="the checkpoint the latest attempt resumed from")
    checkpoints: int = Field(default=0, description="checkpoints saved (the latest few are retained)")
    checkpoint: JsonObject | None = Field(default=None, description="the latest checkpoint")
    last_failure: str | None = Field(default=None, description="why an attempt was lost (worker died, went silent)")
    dead_letter: str | None = Field(default=None, description="its dead-letter entry, when given up on")
    worker: str | None = None
    parent: str | None = Field(default=None, description="the task whose result this one received")
    saga: str | None = Field(default=None, description="the saga whose step or compensation this task runs")
    children: list[str] = Field(default_factory=list, description="tasks that run when this one succeeds")
    rerun_of: str | None = Field(default=None, description="the finished task this one runs again (`rerun_task`)")
    reruns: list[str] = Field(default_factory=list, description="the tasks that run this one again, oldest first")
    progress: Any = None
    input_requests: dict[str, InputRequest] = Field(default_factory=dict, description="input_required: what its "
                                                    "tool asked for, by key; answer with `provide_input`")
    inputs: dict[str, Any] = Field(default_factory=dict, description="answers received, by key ({action, content})")
    idempotency_key: str | None = None
    deadline: float | None = Field(default=None, description="unix seconds")
    not_before: float | None = Field(default=None, description="a delayed task's time to become ready (unix seconds)")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    queue_wait_ms: float | None = Field(default=None, description="acceptance (a delayed task: its not_before) to "
                                        "first start")
    run_ms: float | None = Field(default=None, description="the latest attempt's run time")
    trace_id: str | None = Field(default=None, description="its OpenTelemetry trace (tracing on), 32 hex digits")
    trace_url: str | None = Field(default=None, description="the trace in the operator's tracing UI "
                                  "(`tracing.ui_url`)")


class RerunTaskParams(Params):
    """Run a finished task again as a new task linked both ways (`rerun_of` / `reruns`): its tool, input, context
    and priority unless given here."""

    task_id: str = Field(min_length=1, max_length=64)
    input: JsonObject | None = Field(default=None, description="instead of the original's (checked as run_task v2)")
    priority: Priority | None = None
    idempotency_key: IdempotencyKey | None = None
    agent: Agent | None = None


class RunTaskResult(BaseModel):
    task_id: str
    status: TaskStatus
    duplicate: bool = Field(default=False, description="true when the idempotency key matched an earlier task")


class CancelTaskResult(BaseModel):
    task_id: str
    status: TaskStatus


MAX_PAGE = 500
PageLimit = Annotated[int, Field(ge=1, le=MAX_PAGE, description=f"rows per page, at most {MAX_PAGE}")]
Cursor = Annotated[str, Field(min_length=1, max_length=256, description="`next_cursor` of the previous page")]
UnixSeconds = Annotated[float, Field(ge=0, le=1e11, description="unix seconds")]
Instant = UnixSeconds | AwareDatetime  # unix seconds, or RFC 3339 with a timezone


class ListTasksParams(Params):
    """Find tasks, newest first (by creation time). Every filter given must hold. A page may hold fewer than
    `limit` rows while `next_cursor` is set (a filter no index answers stopped the scan): follow the cursor until
    it is null. A non-admin key sees its own tenant's tasks only."""

    status: TaskStatus | list[TaskStatus] | None = Field(default=None, description="one status or several")
    tool: ToolName | None = None
    worker_type: str | None = Field(default=None, min_length=1, max_length=64)
    priority_min: Priority | None = None
    priority_max: Priority | None = None
    created_after: Instant | None = Field(default=None, description="created at or after (unix seconds or RFC 3339)")
    created_before: Instant | None = Field(default=None, description="created before (unix seconds or RFC 3339)")
    parent_id: str | None = Field(default=None, min_length=1, max_length=64, description="fanout children of this "
                                  "task")
    saga_id: str | None = Field(default=None, min_length=1, max_length=64, description="the tasks of this saga's "
                                "steps and compensations")
    tenant: TenantName | None = Field(default=None, description="admins: only this tenant's tasks (default: every "
                                      "tenant's); other keys may name only their own")
    limit: PageLimit = 50
    cursor: Cursor | None = None


class TaskSummary(BaseModel):
    """A task as `list_tasks` shows it; `get_task` has the rest."""

    task_id: str
    status: TaskStatus
    tool: str
    worker_type: str
    priority: int
    tenant: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    parent: str | None = None
    saga: str | None = None
    error_code: int | None = Field(default=None, description="the error's code, when it failed or was cancelled")


class ListTasksResult(BaseModel):
    tasks: list[TaskSummary]
    next_cursor: str | None = Field(description="pass it as `cursor` for the next page; null: no more")


class WorkerStatus(BaseModel):
    name: str
    worker_type: str
    slots: int
    running: int
    queued: int
    draining: bool = False


class PoolStatus(BaseModel):
    worker_type: str
    workers: int
    slots: int
    running: int
    queued: int
    scheduled: int = Field(default=0, description="delayed tasks not yet due")
    paused: bool = False


class RunningTask(BaseModel):
    task_id: str
    tool: str
    priority: int
    worker: str
    agent: str | None = None
    tenant: str | None = None
    since: float = Field(description="unix seconds it was dispatched")
    preemptions: int = 0


class RouterOverview(BaseModel):
    """What the router knows: pools, workers, the priority matrix and every running task."""

    pools: list[PoolStatus]
    workers: list[WorkerStatus]
    matrix: dict[str, dict[str, int]] = Field(description="queued tasks per worker type × priority")
    running: list[RunningTask]
    nodes: int = Field(default=0, description="alive Ray nodes")
    cluster_cpus: float = Field(default=0.0, description="CPUs of the alive Ray nodes")


class ToolInfo(BaseModel):
    name: str
    kind: str
    worker_type: str
    description: str
    preemptible: bool
    input_schema: JsonObject


class StatusResult(RouterOverview):
    tools: list[ToolInfo]
    stream_length: int
    stream_pending: int
    active_tasks: int
    sla: dict[str, Any] = Field(default_factory=dict, description="per pool: the SLA policy's latest decision")
    circuits: dict[str, str] = Field(default_factory=dict,
                                     description="per LLM provider: its circuit breaker (closed, open, half_open)")


# ---------------------------------------------------------------- sagas


class RunSagaParams(Params):
    workflow: str = Field(min_length=1, max_length=64, description="a workflow from `list_workflows`")
    input: dict[str, Any] = Field(default_factory=dict, description="checked against the workflow's input_schema")
    priority: Priority = 5
    idempotency_key: IdempotencyKey | None = None
    agent: Agent | None = None


class RerunSagaParams(Params):
    """Re-run a failed or cancelled saga from where it stopped: completed steps that were not undone keep their
    outputs; the rest run again. `input` and `priority` default to the original's."""

    saga_id: str = Field(min_length=1, max_length=64)
    input: dict[str, Any] | None = Field(default=None, description="instead of the original's (the steps kept "
                                         "keep their outputs)")
    priority: Priority | None = None
    idempotency_key: IdempotencyKey | None = None
    agent: Agent | None = None


class RunSagaResult(BaseModel):
    saga_id: str
    status: str
    duplicate: bool = False


class SagaIdParams(Params):
    saga_id: str = Field(min_length=1, max_length=64)


class CancelSagaResult(BaseModel):
    saga_id: str
    status: str
    cancel_requested: bool


class ListWorkflowsParams(Params):
    pass


class ListSagasParams(Params):
    """Find sagas, newest first (by creation time); a non-admin key sees its own tenant's only. Pages as
    `list_tasks`."""

    status: SagaStatus | list[SagaStatus] | None = Field(default=None, description="one status or several")
    workflow: str | None = Field(default=None, min_length=1, max_length=64)
    created_after: Instant | None = Field(default=None, description="created at or after (unix seconds or RFC 3339)")
    created_before: Instant | None = Field(default=None, description="created before (unix seconds or RFC 3339)")
    tenant: TenantName | None = Field(default=None, description="admins: only this tenant's sagas (default: every "
                                      "tenant's); other keys may name only their own")
    limit: PageLimit = 50
    cursor: Cursor | None = None


class SagaSummary(BaseModel):
    saga_id: str
    workflow: str
    status: SagaStatus
    tenant: str | None = None
    priority: int
    created_at: float
    finished_at: float | None = None
    error: str | None = None


class ListSagasResult(BaseModel):
    sagas: list[SagaSummary]
    next_cursor: str | None = Field(description="pass it as `cursor` for the next page; null: no more")


# ---------------------------------------------------------------- API keys


KeyName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
                               description="a key's name: shown in audits and listings, never secret")]
MAX_KEY_TTL_S = 10 * 365 * 86_400


class KeysParams(Params):
    """Admin: API keys kept in Redis (only their SHA-256). `create` (tenant, scopes; name, ttl_s or expires_at
    optional) answers the new key, once; `list` (all: also the expired and revoked ones) names every key,
    those of the settings included; `revoke` (name) refuses the key on every replica within a second. A key
    configured in settings cannot be revoked here (remove it from the settings and redeploy). Audited."""

    action: Literal["create", "list", "revoke"]
    name: KeyName | None = Field(default=None, description="create (default: the tenant and a few characters of "
                                 "the hash), revoke")
    tenant: TenantName | None = Field(default=None, description="create: the tenant the key acts for")
    scopes: list[Scope] | None = Field(default=None, min_length=1, description="create: submit, read, admin "
                                       "(everything), metrics, urgent")
    ttl_s: float | None = Field(default=None, gt=0, le=MAX_KEY_TTL_S, description="create: the key expires this "
                                "many seconds from now")
    expires_at: AwareDatetime | None = Field(default=None, description="create: RFC 3339; the key expires then")
    all: bool = Field(default=False, description="list: include expired and revoked keys")


class ApiKeyRecord(BaseModel):
    """A key created at runtime, as stored in Redis under its hash (the key itself is never stored)."""

    name: str
    tenant: str
    scopes: list[Scope]
    created_at: float
    expires_at: float | None = None
    created_by: str = Field(description="the key (or `cli:<user>`) that created it")


class ApiKeyInfo(BaseModel):
    """A key as `keys list` shows it: never the key, never its hash."""

    name: str
    tenant: str
    scopes: list[str]
    source: Literal["settings", "runtime"] = Field(description="settings keys are fixed until a redeploy")
    status: Literal["active", "expired", "revoked"]
    created_at: float | None = Field(default=None, description="unix seconds (runtime keys)")
    expires_at: float | None = Field(default=None, description="unix seconds; null: never")
    revoked_at: float | None = None
    created_by: str | None = None


class KeysResult(BaseModel):
    action: str
    key: str | None = Field(default=None, description="create: the new API key; shown only in this answer")
    info: ApiKeyInfo | None = Field(default=None, description="create, revoke: the key concerned")
    keys: list[ApiKeyInfo] | None = Field(default=None, description="list")


# ---------------------------------------------------------------- schedules


ScheduleOverlap = Literal["skip", "queue", "cancel_previous"]
ScheduleCatchUp = Literal["none", "latest", "all"]


class ScheduleSpec(BaseModel):
    """A schedule as stored: what it fires, when, for whom (the creator's tenant and scopes)."""

    name: str | None = None
    cron: str | None = None
    timezone: str = "UTC"
    interval_s: float | None = None
    tool: str
    input: JsonObject
    priority: int
    overlap: ScheduleOverlap
    catch_up: ScheduleCatchUp
    grace_s: float
    max_catch_up: int
    tenant: str | None
    scopes: list[str] = Field(description="the creator's: the fires run as it would (its quotas, its priority)")
    created_by: str


class CreateScheduleParams(Params):
    """Fire a task on a cron expression (5 fields, in `timezone`) or every `interval_s` seconds. Each tick fires
    exactly once across replicas and crashes (its task's idempotency key is the schedule's and the tick's)."""

    name: str | None = Field(default=None, min_length=1, max_length=128, description="shown in listings")
    cron: str | None = Field(default=None, min_length=1, max_length=256,
                             description="minute hour day-of-month month day-of-week, e.g. `*/15 9-17 * * 1-5`")
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA name, for `cron`")
    interval_s: float | None = Field(default=None, ge=1, le=366 * 86_400,
                                     description="instead of cron: every this many seconds from its creation")
    tool: ToolName
    input: JsonObject = Field(description="validated against the tool's input schema, as run_task v2")
    priority: Priority = 5
    overlap: ScheduleOverlap = Field(default="queue", description="when the previous fire's task is unfinished: "
                                     "skip this tick, queue it anyway, or cancel_previous")
    catch_up: ScheduleCatchUp = Field(default="latest", description="ticks later than grace_s (the orchestrator "
                                      "was down): none of them, the latest, or all (at most max_catch_up)")
    grace_s: float = Field(default=10.0, ge=0, le=86_400, description="a tick this late is still on time")
    max_catch_up: int = Field(default=100, ge=1, le=1000, description="catch_up=all fires at most this many")


class ScheduleIdParams(Params):
    schedule_id: str = Field(min_length=1, max_length=64)


class ListSchedulesParams(Params):
    tenant: str | None = Field(default=None, min_length=1, max_length=64, description="admins: one tenant's only")


class ScheduleRun(BaseModel):
    tick: float = Field(description="unix seconds: the tick this fire was for")
    task_id: str


class ScheduleState(BaseModel):
    """A schedule: its definition, where it stands, its latest fires and (in `get_schedule`) its next ticks."""

    schedule_id: str
    spec: ScheduleSpec
    paused: bool
    next_ms: int = Field(description="its next tick, unix ms")
    last_task: str | None = None
    fired: int = Field(description="ticks fired so far")
    skipped: int = Field(description="ticks that never fired: missed (catch_up) or overlapping (overlap=skip)")
    created_at: float
    runs: list[ScheduleRun] = Field(default_factory=list, description="latest fires, newest first")
    upcoming: list[float] = Field(default_factory=list, description="its next ticks, unix seconds")


class ListSchedulesResult(BaseModel):
    schedules: list[ScheduleState]


class DeleteScheduleResult(BaseModel):
    schedule_id: str
    deleted: bool = True
