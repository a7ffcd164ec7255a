"""Builds the redis-py client for a Redis URL: the one place a client is made. Its users are the state store
(`service.state`) and the embedded server's manager (`service.process.redis_server`, to PING and SHUTDOWN it); with them,
the only modules that import redis. Knows nothing of sessions.

    redis://[:password@]host:port/db, rediss://…, unix:///path?db=0
        one server
    redis+sentinel://[:password@]host:port[,host:port…]/master-name[/db][?wait=1&wait_timeout_ms=1000&sentinel_password=…]
        Redis Sentinel. The master's address is asked of the sentinels whenever a connection is (re)made, so a
        failover is followed. Redis replicates asynchronously, so a write the old master acknowledged can be
        missing from the replica promoted after it dies; here every script (every session write) is followed by
        `WAIT wait wait_timeout_ms` on the same connection, and is acknowledged only once `wait` replicas have
        it (else the call fails as a connection error: the client gets 503, and the write may or may not have
        been applied). Sentinel promotes the most up-to-date replica, so no acknowledged write is lost when the
        master dies. `wait=0` turns this off.
    redis+cluster://[:password@]host:port[,host:port…]
        Redis Cluster: the slot map is read from any listed node; MOVED and ASK redirections are followed
        (they re-send a command to where its key lives, never re-run one that ran). Every session command and
        script touches one key, so all of them work on a cluster.

No silent retries anywhere: a command that failed on the connection is not sent again, since a write whose
reply was lost would be applied twice.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote

import redis
import redis.client
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

SOCKET_TIMEOUT_S = 2.0  # a healthy Redis answers in well under a millisecond; 2 s means it is not healthy
HEALTH_CHECK_INTERVAL_S = 30  # PING a pooled connection that sat idle this long before reusing it
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME, CLUSTER_SCHEME)  # what connect() builds a client for


class ReplicatedRedis(redis.Redis):
    """A Sentinel master's client whose scripts return only once `replicas` replicas acknowledged them."""

    replicas = 1
    wait_timeout_ms = 1000

    def parse_response(self, connection, command_name, **options):
        response = super().parse_response(connection, command_name, **options)
        if self.replicas and str(command_name).upper() in ("EVALSHA", "EVAL"):
            connection.send_command("WAIT", self.replicas, self.wait_timeout_ms)  # same connection: this write
            acknowledged = int(connection.read_response())
            if acknowledged < self.replicas:
                raise redis.ConnectionError(f"the write reached {acknowledged} of {self.replicas} replica(s) within "
                                            f"{self.wait_timeout_ms} ms")
        return response

    def pipeline(self, transaction=True, shard_hint=None) -> "ReplicatedPipeline":
        pipe = ReplicatedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.replicas, pipe.wait_timeout_ms = self.replicas, self.wait_timeout_ms
        return pipe


class ReplicatedPipeline(redis.client.Pipeline):
    """A pipeline of that client: one WAIT after its commands covers every write among them."""

    replicas = 1
    wait_timeout_ms = 1000

    def execute(self, raise_on_error: bool = True):
        if not self.replicas or not self.command_stack:
            return super().execute(raise_on_error)
        self.execute_command("WAIT", self.replicas, self.wait_timeout_ms)
        replies = super().execute(raise_on_error=False)
        acknowledged = replies.pop()
        if isinstance(acknowledged, Exception) or int(acknowledged) < self.replicas:
            raise redis.ConnectionError(f"the writes reached {acknowledged} of {self.replicas} replica(s) within "
                                        f"{self.wait_timeout_ms} ms")
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies


def _hosts(netloc: str) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """user, password and host:port pairs of `[user:password@]host:port[,host:port…]`."""
    credentials, _, hosts = netloc.rpartition("@")
    user, _, password = credentials.partition(":")
    pairs = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {item!r}")
        pairs.append((host.strip("[]"), int(port)))
    return unquote(user) or None, unquote(password) or None, pairs


def connect(url: str, decode_responses: bool = False, client_name: str = "nextword"):
    """A client for `url` (see the module docstring); ValueError for a URL it cannot use."""
    common = dict(socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
                  health_check_interval=HEALTH_CHECK_INTERVAL_S, retry=Retry(NoBackoff(), 0),
                  decode_responses=decode_responses, client_name=client_name)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError("a Redis URL starts with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://")
    if scheme not in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        return redis.Redis.from_url(url, **common)
    location, _, query = rest.partition("?")
    netloc, _, path = location.partition("/")
    user, password, hosts = _hosts(netloc)
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    if scheme == CLUSTER_SCHEME:
        if path.strip("/") not in ("", "0"):
            raise ValueError("Redis Cluster has only database 0")
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in hosts], username=user,
                            password=password, **common)
    master, _, db = path.strip("/").partition("/")
    if not master:
        raise ValueError("a redis+sentinel:// URL names the master after the hosts: …/mymaster")
    sentinel = Sentinel(hosts, sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT_S,
                                                "socket_connect_timeout": SOCKET_TIMEOUT_S,
                                                "password": options.get("sentinel_password")},
                        **common)
    client = sentinel.master_for(master, redis_class=ReplicatedRedis, db=int(db or 0), username=user,
                                 password=password)
    client.replicas = int(options.get("wait", ReplicatedRedis.replicas))
    client.wait_timeout_ms = int(options.get("wait_timeout_ms", ReplicatedRedis.wait_timeout_ms))
    return client


def database(client) -> int:
    """The database number a client uses (always 0 on a cluster)."""
    pool = getattr(client, "connection_pool", None)
    return int(pool.connection_kwargs.get("db", 0) or 0) if pool is not None else 0


def is_cluster(url: str) -> bool:
    return url.partition("://")[0] == CLUSTER_SCHEME


def is_cluster_client(client) -> bool:
    return isinstance(client, RedisCluster)
