"""Settings pickled by an older version (as Ray restarts an actor with its creation arguments) load with the
new fields' defaults instead of crash-looping the actor."""

from __future__ import annotations

import pickle
from typing import Any

from orchestrator.settings import Settings


def older(model: Any, *missing: str) -> Any:
    """The model as an older version would have pickled it: without the fields it did not have yet."""
    state = model.__getstate__()
    state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k not in missing}
    clone = model.__class__.__new__(model.__class__)
    clone.__setstate__(state)
    return pickle.loads(pickle.dumps(clone))


def test_a_settings_object_without_new_fields_gets_their_defaults() -> None:
    settings = Settings(redis={"url": "redis://127.0.0.1:1/0", "prefix": "x"}, router={"visibility_timeout_s": 7})
    redis = older(settings.redis, "shards", "socket_timeout_s", "max_events")
    router = older(settings.router, "replicas", "lease_s")
    assert (redis.shards, redis.socket_timeout_s, redis.prefix) == (1, 5.0, "x")
    assert (router.replicas, router.lease_s, router.visibility_timeout_s) == (1, 5.0, 7)


def test_the_whole_settings_object_too() -> None:
    settings = older(Settings(namespace="n"), "auth", "sla")
    assert settings.namespace == "n" and settings.auth.keys == {} and settings.sla.pools == {}
