"""Compose the system on a connected Ray: the router (which owns the worker pools) and the Serve ingress."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray import serve

from actors.router import RouterActor
from actors.saga_coordinator import SagaCoordinatorActor
from actors.sla_policy import SlaPolicyActor
from deployments.ingress import RpcIngress
from orchestrator.auth import unsafe_bind
from orchestrator.naming import SAGA_COORDINATOR_NAME, SLA_POLICY_NAME, router_name, worker_name
from orchestrator.settings import Settings, ToolSettings

logger = logging.getLogger(__name__)


def init_local_ray(**kwargs: Any) -> Any:
    """`ray.init` of a new local instance whose dashboard agent listens on a free port.

    `ray.init` cannot set that port and Ray's default is fixed (52365): beside any other Ray on the
    machine the agent fails to bind, silently disables its HTTP server, and the job API
    (`ray job submit`) answers "No available agent" for ever. `ray start` has a flag for it; for
    `ray.init` we default the parameter to 0 (any free port), which Ray's agent supports.
    """
    from ray._private import parameter

    original = parameter.RayParams.__init__

    def any_agent_port(self: Any, *args: Any, **params: Any) -> None:
        params.setdefault("dashboard_agent_listen_port", 0)
        original(self, *args, **params)

    parameter.RayParams.__init__ = any_agent_port  # type: ignore[method-assign]
    try:
        return ray.init(**kwargs)
    finally:
        parameter.RayParams.__init__ = original  # type: ignore[method-assign]


def _start_detached(actor_class: Any, name: str, settings: Settings, *args: Any) -> Any:
    """Create (or adopt, after a restart of the caller) a named, detached actor that Ray restarts after a
    crash."""
    return actor_class.options(
        name=name, namespace=settings.namespace, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_concurrency=10_000, num_cpus=0, runtime_env=settings.tracing.runtime_env(),
    ).remote(settings, *args)


def start_actors(settings: Settings) -> list[Any]:
    """Start the router shards, the saga coordinator and the SLA policy side by side (each starts a process of
    its own). The refs answer once the routers hold their leases (one of them manages the pools) and the
    coordinator has queued every unfinished saga for resumption."""
    routers = [_start_detached(RouterActor, router_name(i), settings, i) for i in range(settings.router.replicas)]
    coordinator = _start_detached(SagaCoordinatorActor, SAGA_COORDINATOR_NAME, settings)
    _start_detached(SlaPolicyActor, SLA_POLICY_NAME, settings)  # idle until a pool has SLA targets
    return [*(router.ready.remote() for router in routers), coordinator.ready.remote()]


def with_imported_tools(settings: Settings) -> Settings:
    """The settings plus the tools of every MCP server marked `import_tools` (its `tools/list`).

    Tools configured by hand win over imported ones of the same name.
    """
    imported: dict[str, ToolSettings] = {}
    for server_name, server in settings.mcp_servers.items():
        if server.import_tools:
            from orchestrator.tools.mcp import discover_tools

            imported |= asyncio.run(discover_tools(server_name, server))
            logger.info("imported MCP tools", extra={"server": server_name, "tools": len(imported)})
    if not imported:
        return settings
    return settings.model_copy(update={"tools": {**imported, **settings.tools}})


def _checked(settings: Settings) -> Settings:
    """The settings to run with: refused if they would expose the API unsafely; MCP servers' tools imported."""
    refused = unsafe_bind(settings.http.host, settings.auth, settings.http.proxy)
    if refused is not None:
        raise ValueError(refused)
    return with_imported_tools(settings)


def _replica_options(settings: Settings) -> dict[str, Any]:
    runtime_env = settings.tracing.runtime_env()
    return {"num_cpus": 0} if runtime_env is None else {"num_cpus": 0, "runtime_env": runtime_env}


def _ingress(settings: Settings) -> Any:
    return RpcIngress.options(  # type: ignore[attr-defined]
        num_replicas=settings.http.replicas,
        max_ongoing_requests=settings.http.max_ongoing_requests,
        # A stopping replica looks this often for its last requests to end (Serve's default, 2 s, makes
        # every shutdown and redeploy take that long even when nothing is in flight).
        graceful_shutdown_wait_loop_s=0.2,
        ray_actor_options=_replica_options(settings),
    ).bind(settings)


def build_app(settings: Settings) -> Any:
    """The Serve application: start the actors and wait until they are ready, then bind the ingress."""
    settings = _checked(settings)
    ray.get(start_actors(settings), timeout=120)
    return _ingress(settings)


def deploy(settings: Settings, *, name: str = "orchestrator", route_prefix: str = "/") -> None:
    """Run the whole system on the connected Ray cluster and its Serve instance; return once all of it is ready.

    The actors and the ingress replicas start at the same time: each is a new process that spends a second or
    more importing, and the ingress finds the actors by name when a request needs them.
    """
    settings = _checked(settings)
    ready = start_actors(settings)
    serve.run(_ingress(settings), name=name, route_prefix=route_prefix)
    ray.get(ready, timeout=120)


def teardown(settings: Settings, *, name: str = "orchestrator") -> None:
    """Delete the Serve application and kill the orchestrator's actors, nothing else."""
    serve.delete(name)
    workers = {worker_name(worker_type, i) for worker_type, pool in settings.pools.items() for i in range(pool.workers)}
    routers = [router_name(i) for i in range(settings.router.replicas)]
    for name in routers:  # pools may have been resized since: the pool manager knows every worker it runs
        try:
            workers |= set(ray.get(ray.get_actor(name, namespace=settings.namespace).workers.remote(), timeout=30))
            break
        except Exception:
            continue
    for actor_name in [SLA_POLICY_NAME, *routers, SAGA_COORDINATOR_NAME, *sorted(workers)]:
        try:
            ray.kill(ray.get_actor(actor_name, namespace=settings.namespace), no_restart=True)
        except ValueError:  # never created
            continue
