"""redis_connect on one server and on a Redis Cluster: the Redis behaviours the orchestrator's scripts rely on."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
import redis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub
from redis.exceptions import MaxConnectionsError, OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.adapters.redis_connect import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    RETRIES,
    Client,
    blocking_client,
    connect,
    is_cluster_url,
    pubsub_client,
)
from tests.support import RedisCluster, RedisServer

pytestmark = pytest.mark.integration

SHEBANGS = pytest.mark.parametrize("shebang", ["#!lua\n", ""], ids=["shebang", "no-shebang"])

# Pops task ids from a queue, then reads each task's record through a key built in Lua, not declared in KEYS.
POP_AND_READ = """
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[2])
local statuses = {}
for i = 1, #popped, 2 do
  statuses[#statuses + 1] = redis.call('HGET', '{' .. ARGV[1] .. '}:t:' .. popped[i], 'status')
end
return statuses
"""


def open_client(url: str | Sequence[str], socket_timeout_s: float = 5.0, max_connections: int = 16) -> Client:
    return connect(url, max_connections=max_connections, pool_timeout_s=5.0, socket_timeout_s=socket_timeout_s)


@pytest.fixture(params=["server", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """The session's single server, then the session's cluster."""
    return str(request.getfixturevalue("redis_server" if request.param == "server" else "redis_cluster").url)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Client]:
    client = open_client(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def tag() -> str:
    """A hash tag of this test's own: keys `{tag}:…` share one slot."""
    return f"t{uuid.uuid4().hex[:8]}"


async def next_message(pubsub: PubSub, sharded: bool = False, timeout_s: float = 5.0) -> dict[str, Any]:
    """The next published message; get_message returns None for a skipped subscribe confirmation too."""
    async with asyncio.timeout(timeout_s):
        while True:
            if sharded and isinstance(pubsub, ClusterPubSub):
                message = await pubsub.get_sharded_message(timeout=1.0)
            else:
                message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] in ("message", "smessage"):
                return message


def key_off_node(client: AsyncRedisCluster, node_name: str, tag: str) -> str:
    """A key `{tag-i}:k` whose slot another node than `node_name` serves."""
    return next(key for key in (f"{{{tag}-{i}}}:k" for i in range(10_000))
                if client.get_node_from_key(key).name != node_name)


# --- a: scripts on one hash tag, cross-slot pipelines -------------------------------------------------


@SHEBANGS
async def test_a_script_whose_keys_share_a_hash_tag_runs(client: Client, tag: str, shebang: str) -> None:
    script = client.register_script(shebang + "redis.call('SET', KEYS[1], ARGV[1])\n"
                                              "redis.call('SET', KEYS[2], ARGV[1])\n"
                                              "return redis.call('MGET', KEYS[1], KEYS[2])")
    assert await script(keys=[f"{{{tag}}}:a", f"{{{tag}}}:b"], args=["v"]) == ["v", "v"]


async def test_a_pipeline_without_transaction_mixes_slots(client: Client, tag: str) -> None:
    keys = [f"{tag}:{i}" for i in range(30)]  # no hash tag: spread over the slots, so over the nodes of a cluster
    async with client.pipeline(transaction=False) as pipe:
        for i, key in enumerate(keys):
            pipe.set(key, i)
        for key in keys:
            pipe.get(key)
        replies = await pipe.execute()
    assert replies == [True] * len(keys) + [str(i) for i in range(len(keys))]
    if isinstance(client, AsyncRedisCluster):
        assert len({client.get_node_from_key(key).name for key in keys}) > 1


# --- b: keys a script builds itself ----------------------------------------------------------------------


@SHEBANGS
async def test_a_script_reads_undeclared_keys_of_its_own_hash_tag(client: Client, tag: str, shebang: str) -> None:
    await client.zadd(f"{{{tag}}}:q", {"7": 1, "8": 2, "9": 3})
    for task_id in ("7", "8", "9"):
        await client.hset(f"{{{tag}}}:t:{task_id}", mapping={"status": f"queued-{task_id}"})
    pop = client.register_script(shebang + POP_AND_READ)
    assert await pop(keys=[f"{{{tag}}}:q"], args=[tag, 2]) == ["queued-7", "queued-8"]


@pytest.mark.parametrize(("shebang", "same_node", "error"), [
    ("#!lua\n", True, "Script attempted to access keys that do not hash to the same slot"),
    ("", True, None),  # a script without shebang may cross slots of its node
    ("#!lua\n", False, "Script attempted to access a non local key in a cluster node"),
    ("", False, "Script attempted to access a non local key in a cluster node"),
], ids=["shebang-same-node", "no-shebang-same-node", "shebang-other-node", "no-shebang-other-node"])
async def test_on_a_cluster_a_script_stays_in_its_slot(redis_cluster: RedisCluster, tag: str, shebang: str,
                                                       same_node: bool, error: str | None) -> None:
    client = open_client(redis_cluster.url)
    try:
        declared = f"{{{tag}}}:a"
        await client.set(declared, "1")
        node = client.get_node_from_key(declared)
        if same_node:
            other = next(key for key in (f"{{{tag}-{i}}}:k" for i in range(10_000))
                         if client.get_node_from_key(key).name == node.name
                         and client.keyslot(key) != client.keyslot(declared))
        else:
            other = key_off_node(client, node.name, tag)
        script = client.register_script(shebang + "return redis.call('SET', ARGV[1], 'x')")
        if error is None:
            assert await script(keys=[declared], args=[other]) == "OK"
        else:
            with pytest.raises(ResponseError, match=error):
                await script(keys=[declared], args=[other])
    finally:
        await client.aclose()


# --- c: XREADGROUP inside a script ----------------------------------------------------------------------


@SHEBANGS
async def test_a_script_reads_a_stream_through_a_consumer_group(client: Client, tag: str, shebang: str) -> None:
    stream = f"{{{tag}}}:tasks"
    await client.xgroup_create(stream, "router", id="0", mkstream=True)
    ids = [await client.xadd(stream, {"task": str(i)}) for i in range(2)]
    read = client.register_script(
        shebang + "return redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 10, 'STREAMS', KEYS[1], '>')")
    assert await read(keys=[stream], args=["router", "r1"]) == [
        [stream, [[ids[0], ["task", "0"]], [ids[1], ["task", "1"]]]]]
    assert await read(keys=[stream], args=["router", "r1"]) is None  # nothing new: Lua nil
    assert (await client.xpending(stream, "router"))["pending"] == 2


# --- d: PUBLISH inside a script, sharded pub/sub ---------------------------------------------------------


async def test_publish_from_a_script_reaches_a_subscriber_on_another_node(client: Client, tag: str) -> None:
    channel = f"{tag}:finished"
    pubsub = pubsub_client(client)
    try:
        await pubsub.subscribe(channel)
        key = f"{{{tag}}}:k"
        if isinstance(client, AsyncRedisCluster):
            assert isinstance(pubsub, ClusterPubSub)
            subscribed_on = pubsub.get_pubsub_node()
            assert subscribed_on is not None
            key = key_off_node(client, subscribed_on.name, tag)  # the script runs on another node
        finish = client.register_script("#!lua\nredis.call('SET', KEYS[1], ARGV[2])\n"
                                        "return redis.call('PUBLISH', ARGV[1], ARGV[2])")
        receivers = await finish(keys=[key], args=[channel, "task-1"])
        # PUBLISH counts the subscribers of the node it ran on only: 0 on a cluster, yet the message arrives.
        assert receivers == (0 if isinstance(client, AsyncRedisCluster) else 1)
        assert (await next_message(pubsub))["data"] == "task-1"
    finally:
        await pubsub.aclose()


async def test_spublish_from_a_script_reaches_a_sharded_subscriber(client: Client, tag: str) -> None:
    channel = f"{{{tag}}}:finished"  # a shard channel hashes like a key: it must share the script's slot
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.ssubscribe(channel)
        finish = client.register_script("#!lua\nredis.call('SET', KEYS[1], ARGV[1])\n"
                                        "return redis.call('SPUBLISH', KEYS[2], ARGV[1])")
        assert await finish(keys=[f"{{{tag}}}:k", channel], args=["task-1"]) == 1
        assert (await next_message(pubsub, sharded=True))["data"] == "task-1"
    finally:
        await pubsub.aclose()


# --- e: scripts over maxmemory (one server of this module's own) ------------------------------------------

RAN = "return redis.error_reply('RAN')"  # answers RAN only if the script body runs
WRITES = "redis.call('SET', KEYS[1], 'x')\nredis.call('SET', KEYS[2], 'y')\nreturn 'wrote'"


@pytest.fixture(scope="module")
def full_server() -> Iterator[RedisServer]:
    """A server over its maxmemory from the start: `maxmemory 1`, no eviction."""
    server = RedisServer().start()
    with redis.Redis(port=server.port) as admin:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
    yield server
    server.stop()


@pytest.fixture
async def full(full_server: RedisServer) -> AsyncIterator[Client]:
    client = open_client(full_server.url)
    yield client
    await client.aclose()


async def test_over_maxmemory_a_shebang_script_is_refused_before_it_runs(full: Client, tag: str) -> None:
    keys = [f"{{{tag}}}:a", f"{{{tag}}}:b"]
    for body in (RAN, WRITES):
        with pytest.raises(OutOfMemoryError) as refused:
            await full.register_script("#!lua\n" + body)(keys=keys)
        assert str(refused.value) == "command not allowed when used memory > 'maxmemory'."  # no script line: not run
    assert await full.exists(*keys) == 0


async def test_over_maxmemory_a_script_without_shebang_runs_until_its_first_write(full: Client, tag: str) -> None:
    keys = [f"{{{tag}}}:a", f"{{{tag}}}:b"]
    with pytest.raises(ResponseError, match="^RAN$"):
        await full.register_script(RAN)(keys=keys)
    with pytest.raises(OutOfMemoryError, match=r"^command not allowed when used memory > 'maxmemory'\. "
                                                r"script: \w+, on @user_script:1\.$"):
        await full.register_script(WRITES)(keys=keys)
    assert await full.exists(*keys) == 0


async def test_over_maxmemory_allow_oom_and_no_writes_scripts_run(full: Client, tag: str) -> None:
    keys = [f"{{{tag}}}:a", f"{{{tag}}}:b"]
    assert await full.register_script("#!lua flags=allow-oom\n" + WRITES)(keys=keys) == "wrote"
    assert await full.mget(keys) == ["x", "y"]
    read = full.register_script("#!lua flags=no-writes\nreturn redis.call('GET', KEYS[1])")
    assert await read(keys=keys[:1]) == "x"


# --- f: a server that stops answering; blocking reads; connection limits ---------------------------------


def retry_budget_s(socket_timeout_s: float) -> float:
    """How long a call on an open connection may take to fail: every attempt times out, plus the backoffs."""
    backoffs = sum(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**failures) for failures in range(1, RETRIES + 1))
    return (RETRIES + 1) * socket_timeout_s + backoffs


async def test_a_call_to_a_stopped_server_times_out_and_recovers() -> None:
    server = RedisServer().start()
    client = open_client(server.url, socket_timeout_s=0.1)
    try:
        assert await client.ping()  # the pool holds an open connection, as in steady state
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError, match=f"^Timeout reading from 127.0.0.1:{server.port}$"):
                await client.get("x")
            assert time.monotonic() - started < retry_budget_s(0.1) + 1.0
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await client.ping()
    finally:
        await client.aclose()
        server.stop()


async def test_a_blocking_read_needs_the_blocking_client(redis_server: RedisServer, tag: str) -> None:
    """The socket timeout bounds the reply of XREAD BLOCK too; blocking_client's covers the block."""
    stream = f"{{{tag}}}:events"
    normal = open_client(redis_server.url, socket_timeout_s=0.1)
    blocking = blocking_client(redis_server.url, max_block_s=0.3, max_connections=4, pool_timeout_s=5.0,
                               socket_timeout_s=0.1)
    try:
        with pytest.raises(RedisTimeoutError):
            await normal.xread({stream: "$"}, block=300)
        assert await blocking.xread({stream: "$"}, block=300) == []
    finally:
        await normal.aclose()
        await blocking.aclose()


async def test_past_max_connections_one_server_queues_and_a_cluster_refuses(redis_url: str, tag: str) -> None:
    client = open_client(redis_url, max_connections=2)
    try:
        calls = [client.blpop([f"{{{tag}}}:empty"], timeout=0.2) for _ in range(4)]  # one node, 2 connections
        if isinstance(client, AsyncRedisCluster):
            with pytest.raises(MaxConnectionsError):
                await asyncio.gather(*calls)
        else:
            assert await asyncio.gather(*calls) == [None] * 4
    finally:
        await client.aclose()


# --- URL forms --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "cluster"), [
    ("redis://127.0.0.1:6379/0", False), ("rediss://h:6380/1", False), ("unix:///tmp/redis.sock", False),
    ("redis+cluster://h1:7000,h2:7001", True), ("REDISS+CLUSTER://h1:7000", True), (["h1:7000"], True),
])
def test_cluster_urls_are_told_apart(url: str | list[str], cluster: bool) -> None:
    assert is_cluster_url(url) is cluster


@pytest.mark.parametrize("url", [
    "rediss+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001",
    ["rediss://u:p%40ss@10.0.0.1:7000", "rediss://u:p%40ss@10.0.0.2:7001/0"],
])
async def test_a_cluster_url_names_the_startup_nodes_and_credentials(url: str | list[str]) -> None:
    client = open_client(url)
    try:
        assert isinstance(client, AsyncRedisCluster)
        assert [node.name for node in client.startup_nodes] == ["10.0.0.1:7000", "10.0.0.2:7001"]
        kwargs = client.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["connection_class"].__name__) == (
            "u", "p@ss", "SSLConnection")
    finally:
        await client.aclose()


async def test_the_cluster_url_of_the_test_cluster_reaches_every_node(redis_cluster: RedisCluster) -> None:
    for url in (redis_cluster.url, redis_cluster.nodes):
        client = open_client(url)
        try:
            assert await client.ping()
            assert isinstance(client, AsyncRedisCluster)
            assert sorted(node.name for node in client.get_primaries()) == sorted(redis_cluster.nodes)
        finally:
            await client.aclose()


@pytest.mark.parametrize("url", ["redis+cluster://h1:7000/1", "redis+cluster://h1:7000?ssl=true",
                                 "redis+cluster://", ["redis://a@h1:7000", "redis://b@h2:7000"], ["unix:///x"]])
def test_a_bad_cluster_url_is_refused(url: str | list[str]) -> None:
    with pytest.raises(ValueError):
        connect(url, max_connections=2, pool_timeout_s=1.0, socket_timeout_s=1.0)
