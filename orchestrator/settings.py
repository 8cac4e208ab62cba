"""The one settings object: everything tunable, from env (`ORCH_`), a config file, or code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orchestrator.saga import WorkflowDefinition
from orchestrator.sla import SlaTargets
from orchestrator.upgradable import Upgradable, fill_defaults
from orchestrator.workflows import code_pipeline

WorkerType = str


class RedisSettings(Upgradable):
    url: str | list[str] = Field(default="redis://127.0.0.1:6379/0", description="one server (`redis://h:p/0`), or a "
                                 "cluster: `redis+cluster://h1:p1,h2:p2` or a list of its nodes")
    shards: int = Field(default=1, ge=1, le=4096, description="task shards (hash tags): spread a Redis Cluster's "
                        "load and the routers' share; fixed for the life of the data")
    # Every key the orchestrator writes starts with this, so instances (and tests) can share a server.
    prefix: str = "orch"
    retention_s: int = Field(default=7 * 24 * 3600, ge=60, description="finished task records expire after this")
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=1)
    artifact_retention_s: int = Field(default=30 * 24 * 3600, ge=60, description="an artifact (every version) "
                                      "expires this long after its last publish or restore")
    max_connections: int = Field(default=64, ge=2, description="per process; callers queue for a free one")
    max_checkpoint_bytes: int = Field(default=262_144, ge=64, description="a larger checkpoint is refused")
    pool_timeout_s: float = Field(default=20.0, gt=0, description="how long a caller waits for a free connection")
    socket_timeout_s: float = Field(default=5.0, gt=0, description="a call to a server that stopped answering "
                                    "fails after this (and is retried), instead of hanging")
    max_events: int = Field(default=200, ge=10, description="events kept in a task's history (the oldest progress "
                            "reports go first)")


class HttpSettings(Upgradable):
    host: str = "127.0.0.1"
    proxy: Literal["serve", "haproxy"] = Field(default="serve", description="Serve's HTTP proxy (Python), or "
                                               "HAProxy with Serve's throughput mode: about 4x less latency per "
                                               "request, but it listens on every interface (needs auth.keys)")
    port: int = Field(default=8000, ge=1, le=65535)
    replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=256, ge=1)

    def ray_environment(self) -> dict[str, str]:
        """What the environment of Ray's processes needs for this proxy: set before Ray (and Serve) start."""
        if self.proxy == "haproxy":
            return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
        return {}


class PoolSettings(Upgradable):
    workers: int = Field(default=1, ge=0)
    slots: int = Field(default=8, ge=1, description="tasks one worker runs at once")
    num_cpus: float = Field(default=0.0, ge=0, description="CPUs reserved per worker actor")


OPENAI_PRESETS: dict[str, dict[str, str]] = {
    # Real public endpoints; the key is read from the named environment variable when settings load.
    "deepseek": {"base_url": "https://api.deepseek.com", "model": "deepseek-chat", "api_key_env": "DEEPSEEK_API_KEY",
                 "provider": "deepseek"},
    "deepseek-reasoner": {
        "base_url": "https://api.deepseek.com",
        "model": "deepseek-reasoner",
        "api_key_env": "DEEPSEEK_API_KEY",
        "provider": "deepseek",
    },
    "perplexity": {"base_url": "https://api.perplexity.ai", "model": "sonar", "api_key_env": "PERPLEXITY_API_KEY",
                   "provider": "perplexity"},
}

ToolKind = Literal["echo", "openai", "mcp", "python", "ml", "artifact"]
_FUNCTION_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


class ProviderSettings(Upgradable):
    """Limits and resilience for one provider account, shared by every worker through Redis.

    Budgets are kept per provider *and* API key: two keys of one provider have separate budgets.
    """

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0, description="prompt + completion tokens")
    max_concurrency: int | None = Field(default=None, ge=1, description="requests in flight at once")
    burst: int = Field(default=1, ge=1, description="requests (and that many requests' tokens) allowed back to back")
    max_retries: int = Field(default=8, ge=0, description="per call, for 5xx, timeouts and connection errors")
    rate_limited_budget_s: float = Field(
        default=300.0, ge=0, description="per call, time spent waiting out 429s before giving up (429s never count "
        "towards max_retries: the provider said when to come back)")
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open the circuit")
    breaker_open_s: float = Field(default=30.0, gt=0, description="how long an open circuit refuses calls before a probe")


class McpServerSettings(Upgradable):
    """A downstream MCP server: a stdio command or a Streamable HTTP URL."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] | None = Field(default=None, min_length=1, description="argv of a stdio server")
    env: dict[str, str] = Field(default_factory=dict, description="environment of the stdio server")
    url: str | None = Field(default=None, description="Streamable HTTP endpoint, e.g. http://host:port/mcp")
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="sent with every HTTP request")
    timeout_s: float = Field(default=60.0, gt=0, description="per tool call")
    import_tools: bool = Field(default=False, description="register the server's tools (tools/list) at startup")
    tool_prefix: str = Field(default="", description="imported tools are named <prefix><remote name>")
    worker_type: WorkerType = Field(default="reasoning", description="pool that runs imported tools")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server needs exactly one of command (stdio) or url (Streamable HTTP)")
        return self


class ToolSettings(Upgradable):
    kind: ToolKind
    worker_type: WorkerType = "reasoning"
    description: str = ""
    preemptible: bool = True
    priority: int = Field(default=5, ge=0, le=10, description="a task's priority when the call names none")
    task_support: Literal["forbidden", "optional", "required"] = Field(
        default="optional", description="MCP Tasks: optional (a call of a client that opted in answers with a task), "
        "required (only such calls), forbidden (every call runs within the request)")
    ask_first: bool = Field(default=False, description="MCP: a call that would answer with a task first gathers "
                            "what the task asks for (ctx.ask) within the call (input_required rounds), then hands "
                            "over the task")
    # mcp, python and ml kinds: the published input schema (mcp: imported from the server's tools/list)
    input_schema: dict[str, Any] | None = None
    # echo kind: perform a side effect once per task, keyed by its id, in this directory (demos, fault tests)
    effect_dir: Path | None = None
    # openai kind: a preset fills what is not given explicitly.
    preset: str | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    stream: bool = True
    max_tokens: int | None = Field(default=None, ge=1)
    provider: str | None = Field(default=None, description="key into `providers` (limits); default: the tool name")
    fallback: list[str] = Field(default_factory=list, description="openai tools tried in order when this one is down")
    # mcp kind
    server: str | None = Field(default=None, description="key into `mcp_servers`")
    remote_tool: str | None = Field(default=None, description="the tool's name on the server; default: this name")
    # python and ml kinds: "package.module:function"; ml functions run as Ray tasks with these resources
    function: str | None = Field(default=None, pattern=_FUNCTION_PATTERN)
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _apply_preset(self) -> ToolSettings:
        if self.preset is not None:
            if self.preset not in OPENAI_PRESETS:
                raise ValueError(f"unknown preset {self.preset!r}; known: {sorted(OPENAI_PRESETS)}")
            for key, value in OPENAI_PRESETS[self.preset].items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
        if self.input_schema is not None:
            try:
                Draft202012Validator.check_schema(self.input_schema)
            except SchemaError as exc:
                raise ValueError(f"input_schema is not a valid JSON Schema: {exc.message}") from None
        if self.kind in ("python", "ml") and self.function is None:
            raise ValueError(f"a {self.kind} tool needs function ('package.module:function')")
        if self.kind == "mcp" and self.server is None:
            raise ValueError("an mcp tool needs server (a key of mcp_servers)")
        if self.kind == "openai":
            if not self.base_url or not self.model:
                raise ValueError("an openai tool needs base_url and model (or a preset)")
            if self.api_key is None and self.api_key_env:
                # Resolved once here: actors on other nodes must not read their own environment.
                key = os.environ.get(self.api_key_env)
                if key:
                    self.api_key = SecretStr(key)
        return self


def _default_pools() -> dict[str, PoolSettings]:
    return {
        "reasoning": PoolSettings(workers=1, slots=16),
        "codegen": PoolSettings(workers=1, slots=16),
        "ml": PoolSettings(workers=1, slots=2),
    }


def _default_tools() -> dict[str, ToolSettings]:
    return {
        "echo": ToolSettings(kind="echo", worker_type="reasoning", description="Returns its prompt; the null tool."),
        "deepseek": ToolSettings(kind="openai", preset="deepseek", worker_type="reasoning",
                                 description="DeepSeek chat (OpenAI-compatible)."),
        "deepseek-reasoner": ToolSettings(kind="openai", preset="deepseek-reasoner", worker_type="reasoning",
                                          description="DeepSeek reasoning model."),
        "deepseek-coder": ToolSettings(kind="openai", preset="deepseek", worker_type="codegen",
                                       description="DeepSeek chat on the codegen pool."),
        "perplexity": ToolSettings(kind="openai", preset="perplexity", worker_type="reasoning",
                                   description="Perplexity Sonar (OpenAI-compatible)."),
        "autotune": ToolSettings(kind="ml", worker_type="ml", function="orchestrator.ml.autotune:autotune",
                                 description="Hyperparameter search over a scikit-learn model, as parallel Ray tasks."),
        "sandbox.run": ToolSettings(kind="python", worker_type="codegen", function="orchestrator.tools.code:run_code",
                                    description="Runs Python code in the sandbox (no network, limits on CPU, "
                                                "memory, processes, files and time)."),
        "sandbox.test": ToolSettings(kind="python", worker_type="codegen",
                                     function="orchestrator.tools.code:run_tests",
                                     description="Runs code's unittest tests in the sandbox."),
        "artifacts": ToolSettings(kind="artifact", worker_type="codegen",
                                  description="Publishes a new version of an artifact, or restores an earlier one."),
    }


class SandboxSettings(Upgradable):
    """How `sandbox.run` and `sandbox.test` isolate generated code (README: The code sandbox)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "bwrap", "unshare", "unsafe-plain"] = Field(
        default="auto", description="auto: bwrap, else unshare, else refuse to run; unsafe-plain: no isolation "
        "at all (network, the worker's files and processes reachable): only for code you trust")
    bwrap: str = Field(default="bwrap", description="the bubblewrap binary: a name on PATH or a path")


def _otel_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith("OTEL_")}


class TracingSettings(Upgradable):
    """OpenTelemetry traces (README: Tracing): off unless `env` asks for an exporter."""

    model_config = ConfigDict(extra="forbid")

    env: dict[str, str] = Field(
        default_factory=_otel_env, description="the standard OTEL_* variables (by default, those of the process "
        "that builds the settings); every actor and replica gets them as its runtime_env")
    ui_url: str | None = Field(default=None, description="a trace in the operator's tracing UI, with {trace_id}, "
                               "e.g. http://jaeger:16686/trace/{trace_id}: get_task and the console link to it")

    @model_validator(mode="after")
    def _checked(self) -> TracingSettings:
        if self.ui_url is not None and "{trace_id}" not in self.ui_url:
            raise ValueError("tracing.ui_url must contain {trace_id}")
        if any(not name.startswith("OTEL_") for name in self.env):
            raise ValueError("tracing.env holds only OTEL_* variables")
        return self

    def runtime_env(self) -> dict[str, Any] | None:
        """An actor's Ray runtime_env carrying the variables (None: nothing to carry, Ray's default)."""
        return {"env_vars": dict(self.env)} if self.env else None

    def url_of(self, trace_id: str | None) -> str | None:
        return None if self.ui_url is None or trace_id is None else self.ui_url.replace("{trace_id}", trace_id)


class SlaSettings(Upgradable):
    """The SLA policy actor: pools listed in `pools` are resized to their targets (others keep their size)."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(default=10.0, gt=0, description="how often pools are measured and resized")
    window_s: int = Field(default=60, ge=60, le=3600, description="queue-wait p95 is measured over this window")
    pools: dict[WorkerType, SlaTargets] = Field(default_factory=dict)


class SagaSettings(Upgradable):
    model_config = ConfigDict(extra="forbid")

    max_running: int = Field(default=1000, ge=1, description="sagas driven at once; more wait, highest priority first")
    planner_tool: str = Field(default="deepseek-reasoner", description="code_pipeline's reasoning step")
    coder_tool: str = Field(default="deepseek-coder", description="code_pipeline's codegen step")
    step_timeout_s: float = Field(default=600.0, gt=0, description="code_pipeline: per step attempt")


class LimitSettings(Upgradable):
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch: int = Field(default=100, ge=1)
    max_prompt_chars: int = Field(default=100_000, ge=1)
    max_context_bytes: int = Field(default=262_144, ge=2)
    max_children: int = Field(default=16, ge=0, description="fanout children per task")
    max_wait_s: float = Field(default=60.0, ge=0)
    max_event_streams: int = Field(default=256, ge=1, description="SSE followers per ingress replica")
    max_event_streams_per_tenant: int = Field(default=32, ge=1, description="SSE followers of one tenant, over "
                                              "every replica")
    max_event_stream_s: float = Field(default=3600.0, gt=0, description="an SSE stream ends after this (the "
                                      "client resumes with Last-Event-ID)")
    max_mcp_sessions_per_tenant: int = Field(default=64, ge=1, description="open MCP sessions of one tenant")
    max_mcp_session_s: float = Field(default=86_400.0, gt=0, description="an MCP session ends after this, idle "
                                     "or not")
    max_active_tasks: int = Field(default=1_000_000, ge=1, description="queued + running; beyond it submits are "
                                  "refused (each shard takes an equal share)")
    queue_full_retry_after_s: float = Field(default=1.0, ge=0)
    max_schedules_per_tenant: int = Field(default=100, ge=1, description="schedules one tenant may have")
    max_delay_s: float = Field(default=30 * 86_400.0, gt=0, description="how far ahead a delayed task's not_before "
                               "(or delay_s) may be")


SCOPES = ("submit", "read", "admin", "metrics", "urgent")
RESERVED_KEY_NAMES = frozenset({"system", "anonymous", "nobody"})  # the orchestrator's own callers, in audits
Scope = Literal["submit", "read", "admin", "metrics", "urgent"]
TenantName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description="a tenant's name")]


class ApiKeySettings(Upgradable):
    """One API key, configured by its hash: the key itself is never stored."""

    model_config = ConfigDict(extra="forbid")

    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="`orchestrator keys create` prints it")
    tenant: TenantName
    scopes: list[Scope] = Field(min_length=1, description="submit, read, admin (everything), metrics, urgent "
                                "(priorities at or above the preemption threshold)")


class QuotaSettings(Upgradable):
    """What one tenant's keys may submit (admin keys are exempt; a saga's steps are held to `max_active_tasks`)."""

    model_config = ConfigDict(extra="forbid")

    max_active_tasks: int | None = Field(default=None, ge=1, description="accepted and not finished, children "
                                         "included; beyond it run_task is refused")
    submits_per_s: float | None = Field(default=None, gt=0, description="run_task and run_saga calls per second")
    submit_burst: int = Field(default=10, ge=1, description="submits allowed back to back")
    max_priority: int | None = Field(default=None, ge=0, le=10, description="the highest priority the tenant's "
                                     "keys may use (may reach the preemption threshold); without it: below the "
                                     "threshold, unless the key has the `urgent` scope")
    max_running_sagas: int | None = Field(default=None, ge=1, description="sagas driven at once; more wait in the "
                                          "coordinator's queue while other tenants' run (sagas.max_running: in all)")


class AuthSettings(Upgradable):
    """API keys: these, and those created at runtime (kept in Redis). Auth is off only while neither exists
    and `required` is false; the orchestrator then serves loopback only."""

    model_config = ConfigDict(extra="forbid")

    keys: dict[str, ApiKeySettings] = Field(default_factory=dict, description="by key name (shown in audits)")
    default_quota: QuotaSettings = QuotaSettings()
    quotas: dict[str, QuotaSettings] = Field(default_factory=dict, description="per tenant, instead of the default")
    required: bool = Field(default=False, description="auth is on even with no key anywhere (everything is "
                           "refused until `orchestrator keys create --redis-url` makes one): what serving other "
                           "interfaces needs when no key is configured here")

    @model_validator(mode="after")
    def _hashes_are_unique(self) -> AuthSettings:
        names: dict[str, str] = {}
        for name, key in self.keys.items():
            if name.lower() in RESERVED_KEY_NAMES:
                raise ValueError(f"auth.keys.{name}: the name is reserved (it names the orchestrator's own callers "
                                 "in audits); choose another")
            if key.hash in names:
                raise ValueError(f"auth.keys.{names[key.hash]} and auth.keys.{name} have the same hash")
            names[key.hash] = name
        return self

    def quota_for(self, tenant: str) -> QuotaSettings:
        return self.quotas.get(tenant, self.default_quota)


class RouterSettings(Upgradable):
    replicas: int = Field(default=1, ge=1, le=64, description="router actors sharing the shards' leases")
    lease_s: float = Field(default=5.0, gt=0, description="a router's leases expire this long after it stops "
                           "renewing them: another takes over its shards")
    call_timeout_s: float = Field(default=30.0, gt=0)
    preempt_threshold: int = Field(default=10, ge=1, le=10, description="tasks at or above it preempt when no slot is free")
    max_preemptions: int = Field(default=3, ge=0, description="a task preempted this often is left alone (no cascades)")
    max_attempts: int = Field(default=3, ge=1, description="attempts lost to crashes before a task is dead-lettered")
    heartbeat_interval_s: float = Field(default=5.0, gt=0, description="how often workers show running tasks alive")
    visibility_timeout_s: float = Field(
        default=30.0, gt=0, description="a running task silent this long is taken back and re-dispatched"
    )
    aging_interval_s: float = Field(
        default=30.0, ge=0, description="each interval waited raises a queued task's priority by one, up to 9; 0 = off"
    )
    schedule_interval_s: float = Field(default=0.2, gt=0, description="how often the pools lease holder fires "
                                       "due schedules")
    promote_interval_s: float = Field(default=1.0, gt=0, le=10, description="a router looks for delayed tasks "
                                      "come due at least this often (it sleeps until the next one due, and is woken when one is scheduled)")


class Settings(BaseSettings):
    """Everything tunable. Actors get it pickled: an older pickle loads with the new fields' defaults."""

    model_config = SettingsConfigDict(env_prefix="ORCH_", env_nested_delimiter="__", extra="forbid")

    config_file: Path | None = Field(default=None, description="TOML file read before env vars")
    namespace: str = Field(default="mcp_orchestrator", description="Ray namespace of the actors")
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("mcp-orchestrator")),
                           description="state, logs and the local Redis's AOF")
    redis: RedisSettings = RedisSettings()
    http: HttpSettings = HttpSettings()
    pools: dict[WorkerType, PoolSettings] = Field(default_factory=_default_pools)
    tools: dict[str, ToolSettings] = Field(default_factory=_default_tools)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    sagas: SagaSettings = SagaSettings()
    sla: SlaSettings = SlaSettings()
    workflows: dict[str, WorkflowDefinition] = Field(default_factory=dict, description="besides code_pipeline")
    mcp_servers: dict[str, McpServerSettings] = Field(default_factory=dict)
    limits: LimitSettings = LimitSettings()
    router: RouterSettings = RouterSettings()
    auth: AuthSettings = AuthSettings()
    sandbox: SandboxSettings = SandboxSettings()
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    def __setstate__(self, state: dict[str, Any]) -> None:
        fill_defaults(type(self), state)
        super().__setstate__(state)

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any) -> Any:
        """Pools and tools given in env or file extend and override the defaults, not replace them."""
        if isinstance(data, dict):
            for key, defaults in (("pools", _default_pools), ("tools", _default_tools)):
                given = data.get(key)
                if isinstance(given, dict):
                    merged: dict[str, Any] = {n: v.model_dump(exclude_unset=True) for n, v in defaults().items()}
                    for name, value in given.items():
                        base = merged.get(name, {})
                        merged[name] = {**base, **value} if isinstance(value, dict) else value
                    data = {**data, key: merged}
        return data

    @model_validator(mode="after")
    def _tools_are_complete(self) -> Settings:
        for worker_type in self.sla.pools:
            if worker_type not in self.pools:
                raise ValueError(f"sla.pools.{worker_type}: no such pool")
        for name, server in self.mcp_servers.items():
            if server.import_tools and server.worker_type not in self.pools:
                raise ValueError(f"MCP server {name!r} imports tools onto worker type {server.worker_type!r}, "
                                 "which has no pool")
        for name, tool in self.tools.items():
            if tool.worker_type not in self.pools:
                raise ValueError(f"tool {name!r} needs worker type {tool.worker_type!r}, which has no pool")
            if tool.server is not None and tool.server not in self.mcp_servers:
                raise ValueError(f"tool {name!r} names MCP server {tool.server!r}, which is not in mcp_servers")
            for other in tool.fallback:
                if other == name or other not in self.tools or self.tools[other].kind != "openai":
                    raise ValueError(f"tool {name!r}: fallback {other!r} is not another openai tool")
        return self

    @model_validator(mode="after")
    def _workflows_are_runnable(self) -> Settings:
        for key, workflow in self.workflows.items():
            if workflow.name != key:
                raise ValueError(f"workflows.{key}: its name is {workflow.name!r}; use the same name as the key")
        for name, workflow in self.all_workflows().items():
            problems = workflow.problems(self.tools)
            if problems:
                why = "; ".join(f"{path}: {reason}" for path, reason in problems.items())
                raise ValueError(f"workflow {name!r} cannot run: {why}")
        return self

    def all_workflows(self) -> dict[str, WorkflowDefinition]:
        """The workflows sagas can run: code_pipeline and the configured ones (which may replace it)."""
        sagas = self.sagas
        builtin = code_pipeline(sagas.planner_tool, sagas.coder_tool, sagas.step_timeout_s)
        return {builtin.name: builtin, **{w.name: w for w in self.workflows.values()}}

    def provider_of(self, tool_name: str) -> str:
        """The provider account a tool's calls are limited under."""
        return self.tools[tool_name].provider or tool_name

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file(init_settings, env_settings)
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _config_file(*sources: PydanticBaseSettingsSource) -> Path | None:
    """The config file named in code or by ORCH_CONFIG_FILE; a named file that is missing is an error."""
    for source in sources:
        value: Any = source().get("config_file")
        if value:
            path = Path(value)
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist")
            return path
    return None
