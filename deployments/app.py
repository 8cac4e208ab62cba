"""Compose the system on a connected Ray: the router (which owns the worker pools) and the Serve ingress."""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import serve

from actors.router import RouterActor
from deployments.ingress import RpcIngress
from orchestrator.naming import ROUTER_NAME, worker_name
from orchestrator.settings import Settings

logger = logging.getLogger(__name__)


def start_router(settings: Settings) -> Any:
    """Create (or adopt, after a restart of the caller) the router and wait until it is consuming."""
    router = RouterActor.options(  # type: ignore[attr-defined]
        name=ROUTER_NAME, namespace=settings.namespace, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_concurrency=10_000, num_cpus=0,
    ).remote(settings)
    ray.get(router.start.remote(), timeout=120)
    return router


def build_app(settings: Settings) -> Any:
    """The Serve application: start the router, then bind the ingress with the same settings."""
    start_router(settings)
    return RpcIngress.options(  # type: ignore[attr-defined]
        num_replicas=settings.http.replicas,
        max_ongoing_requests=settings.http.max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    ).bind(settings)


def deploy(settings: Settings, *, name: str = "orchestrator", route_prefix: str = "/") -> None:
    """Run the whole system on the connected Ray cluster and its Serve instance."""
    serve.run(build_app(settings), name=name, route_prefix=route_prefix)


def teardown(settings: Settings, *, name: str = "orchestrator") -> None:
    """Delete the Serve application and kill the orchestrator's actors, nothing else."""
    serve.delete(name)
    names = [ROUTER_NAME] + [
        worker_name(worker_type, i) for worker_type, pool in settings.pools.items() for i in range(pool.workers)
    ]
    for actor_name in names:
        try:
            ray.kill(ray.get_actor(actor_name, namespace=settings.namespace), no_restart=True)
        except ValueError:  # never created
            continue
