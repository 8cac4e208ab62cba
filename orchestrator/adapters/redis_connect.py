"""Redis clients for one server or a Redis Cluster, chosen by the URL, with a timeout and retries on every call.

URL forms:

- one server: ``redis://[[user]:password@]host:port/db``, ``rediss://…``, ``unix:///path.sock``;
- a cluster: ``redis+cluster://[[user]:password@]host1:port1,host2:port2`` (``rediss+cluster://`` for TLS),
  or a list of startup nodes, each ``host:port`` or ``redis[s]://[[user]:password@]host:port``. Any one
  reachable node is enough to discover the others.

Differences that callers see (the same code otherwise runs on both):

- One server: callers queue for a free connection up to ``pool_timeout_s`` (a BlockingConnectionPool).
  A cluster has one pool per node and redis-py offers no blocking one: past ``max_connections`` in use on
  a node, a call fails at once with ``MaxConnectionsError`` (a ``ConnectionError``); ``pool_timeout_s`` is
  unused.
- Unavailability has more shapes on a cluster (`UNAVAILABLE_ERRORS`): a cluster that lost a master answers
  ``ClusterDownError`` (a ``ResponseError``) once it noticed, and one that no node answers raises
  ``RedisClusterUnreachableError``, which is not even a ``RedisError``.
- Every call on a connection has ``socket_timeout_s``, including the reply of ``XREAD``/``XREADGROUP``
  ``BLOCK``: a blocking read needs a client from `blocking_client`, whose timeout covers the block.

Timeouts are retried like connection errors (``RETRIES`` times, backoffs of 3.1 s in all), so a call on an
open connection to a server that stopped answering fails with ``TimeoutError`` after
``(RETRIES + 1) * socket_timeout_s + 3.1 s``, and a write whose reply timed out may run twice. On one
server, a new connection nests the retries of its health-check PING in those of the connect: up to
``(RETRIES + 1) ** 2 * socket_timeout_s + 7 * 3.1 s``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeAlias
from urllib.parse import SplitResult, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError, RedisClusterUnreachableError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

Client: TypeAlias = aioredis.Redis | aioredis.RedisCluster

# What a call raises, after the client's retries, when the server or cluster is not available.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterDownError, RedisClusterUnreachableError,
)

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}  # → the scheme of each node
RETRIES = 5
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.05, 2.0  # sleeps 0.1, 0.2, 0.4, 0.8, 1.6 s between the 6 attempts
# No PING before a command on an idle connection: a dead connection fails its call within the socket timeout and
# the call is retried on a new one, while a health check's own retries nest inside each connect retry (a frozen
# server then held a call for minutes).
HEALTH_CHECK_INTERVAL_S = 0


def is_cluster_url(url: str | Sequence[str]) -> bool:
    """Whether `url` names a Redis Cluster: a ``redis[s]+cluster://`` URL or a list of startup nodes."""
    if isinstance(url, str):
        return url.partition("://")[0].lower() in CLUSTER_SCHEMES
    return True


def connect(url: str | Sequence[str], *, max_connections: int, pool_timeout_s: float, socket_timeout_s: float,
            socket_connect_timeout_s: float = 5.0) -> Client:
    """A client for the server or cluster at `url` that retries connection errors and timeouts with backoff.

    Args:
        max_connections: of this client: in all for one server, per node for a cluster.
        pool_timeout_s: how long a caller waits for a free connection (one server only).
        socket_timeout_s: the longest any reply may take before the attempt counts as failed.
    """
    retry = Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), retries=RETRIES)
    common: dict[str, Any] = {
        "decode_responses": True, "retry": retry, "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": HEALTH_CHECK_INTERVAL_S, "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_connect_timeout_s,
    }
    if not is_cluster_url(url):
        assert isinstance(url, str)  # a list of nodes is a cluster
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=pool_timeout_s,
                                                        **common)
        return aioredis.Redis.from_pool(pool)
    nodes = _startup_nodes(url)
    first = nodes[0]
    return aioredis.RedisCluster(
        startup_nodes=[ClusterNode(node.hostname or "", node.port or 6379) for node in nodes],
        max_connections=max_connections, ssl=first.scheme == "rediss",
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        **common,
    )


def blocking_client(url: str | Sequence[str], *, max_block_s: float, max_connections: int, pool_timeout_s: float,
                    socket_timeout_s: float, socket_connect_timeout_s: float = 5.0) -> Client:
    """A client for blocking reads (``XREAD BLOCK``) of up to `max_block_s`: its socket timeout covers the block.

    Keep blocking reads on their own client: each holds a connection for the whole block, which would
    otherwise starve ordinary calls, and their replies need the longer timeout.
    """
    return connect(url, max_connections=max_connections, pool_timeout_s=pool_timeout_s,
                   socket_timeout_s=socket_timeout_s + max_block_s, socket_connect_timeout_s=socket_connect_timeout_s)


def pubsub_client(client: Client) -> PubSub:
    """A PubSub to `subscribe` with, on one server or a cluster; subscribe confirmations are not delivered.

    On a cluster it holds one connection, to the node owning the slot of the first channel subscribed.
    Classic ``PUBLISH`` (from a client or a Lua script on any node) reaches every node, so that is enough;
    its reply counts only the subscribers of the node it ran on. Sharded pub/sub works too (``ssubscribe``,
    ``SPUBLISH`` with the channel in the script's slot) but is read with ``get_sharded_message`` on a
    cluster and ``get_message`` on one server.
    """
    return client.pubsub(ignore_subscribe_messages=True)


def _startup_nodes(url: str | Sequence[str]) -> list[SplitResult]:
    """Each startup node as a parsed ``redis[s]://`` URL; all must share the scheme and the credentials."""
    if isinstance(url, str):
        scheme, _, rest = url.partition("://")
        userinfo, at, hosts = rest.rpartition("@")
        hosts, _, db = hosts.partition("/")
        if db not in ("", "0") or "?" in url:
            raise ValueError("a Redis Cluster URL takes no database and no options")
        node_scheme = CLUSTER_SCHEMES[scheme.lower()]
        items = [f"{node_scheme}://{userinfo}{at}{host}" for host in hosts.split(",") if host]
    else:
        items = [item if "://" in item else f"redis://{item}" for item in url]
    nodes = [urlsplit(item) for item in items]
    if not nodes:
        raise ValueError("a Redis Cluster needs at least one startup node")
    for node in nodes:
        if node.scheme not in ("redis", "rediss") or not node.hostname or node.path not in ("", "/", "/0"):
            raise ValueError(f"not a Redis Cluster node: {node.scheme}://{node.hostname}:{node.port}{node.path}")
    if len({(n.scheme, n.username, n.password) for n in nodes}) > 1:
        raise ValueError("the startup nodes of a Redis Cluster must share the scheme and the credentials")
    return nodes
