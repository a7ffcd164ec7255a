"""Real local Redis topologies for tests, on 127.0.0.1 only, from the same redis-server binary as the rest of the
suite (service/process/redis_server.py): a 3-master Redis Cluster, and a Sentinel set-up (a master, two replicas, three
sentinels). Each `.url` is what the service takes as REDIS_URL."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

import redis as redis_py

from service.process.redis_server import RedisServer, find_redis_server

MASTER_NAME = "nextword"


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except redis_py.RedisError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too; cluster nodes need ports up to 55535."""
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    """Three masters, no replicas, every slot assigned."""

    def __init__(self, folder: Path, masters: int = 3):
        self.nodes = [RedisServer(folder / f"node{i}", port=_cluster_port(), persist=False, extra_config=(
            "cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 2000"))
            for i in range(masters)]
        self.url = ""

    def start(self) -> "LocalCluster":
        for node in self.nodes:
            node.start()
        cli = str(Path(find_redis_server()).with_name("redis-cli"))
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run([cli, "--cluster", "create", *addresses, "--cluster-yes"], check=True, capture_output=True,
                       timeout=60)
        for node in self.nodes:
            client = self.node_client(node)
            _wait(lambda: client.cluster("info")["cluster_state"] == "ok", 30, f"cluster state ok on {node.port}")
            client.close()
        self.url = "redis+cluster://" + ",".join(addresses)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @staticmethod
    def node_client(node: RedisServer) -> redis_py.Redis:
        return redis_py.Redis(host="127.0.0.1", port=node.port, socket_timeout=5, decode_responses=True)


class LocalSentinel:
    """One master, two replicas, three sentinels that fail the master over one second after it stops answering."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.master = RedisServer(folder / "master", persist=False)
        self.replicas: list[RedisServer] = []
        self.sentinels: list[RedisServer] = []
        self.url = ""

    def start(self) -> "LocalSentinel":
        self.master.start()
        for i in range(2):
            replica = RedisServer(self.folder / f"replica{i}", persist=False,
                                  extra_config=(f"replicaof 127.0.0.1 {self.master.port}",))
            replica.start()
            self.replicas.append(replica)
        master = self.client(self.master)
        _wait(lambda: master.info("replication")["connected_slaves"] == 2, 30, "two replicas in sync")
        master.close()
        for i in range(3):
            sentinel = RedisServer(self.folder / f"sentinel{i}", persist=False, maxmemory="0", extra_args=("--sentinel",),
                                   extra_config=(f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2",
                                                 f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                                                 f"sentinel failover-timeout {MASTER_NAME} 10000"))
            sentinel.start()
            self.sentinels.append(sentinel)
        for sentinel in self.sentinels:  # every sentinel knows the replicas and the other sentinels
            client = self.client(sentinel)
            _wait(lambda: (lambda m: int(m["num-slaves"]) == 2 and int(m["num-other-sentinels"]) == 2)(
                client.sentinel_master(MASTER_NAME)), 30, "sentinels that know each other")
            client.close()
        self.url = (f"redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
                    + f"/{MASTER_NAME}")
        return self

    def stop(self) -> None:
        for server in [*self.sentinels, *self.replicas, self.master]:
            server.stop()

    def master_port(self) -> int:
        client = self.client(self.sentinels[0])
        try:
            return int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1])
        finally:
            client.close()

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in [self.master, *self.replicas] if s.port == port)

    @staticmethod
    def client(server: RedisServer) -> redis_py.Redis:
        return redis_py.Redis(host="127.0.0.1", port=server.port, socket_timeout=5, decode_responses=True)
