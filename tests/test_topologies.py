"""The session store on real Redis topologies (tests/redis_topologies.py, loopback only): Redis Cluster slot
migrations (ASK, then MOVED) under the service, and a Sentinel master killed under load with no acknowledged
write lost. The session and generation suites also run on both (see TOPOLOGY_MODULES in conftest.py)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis as redis_py
import requests

from service.redis_client import connect
from service.state import session_key
from tests.redis_topologies import LocalCluster, LocalSentinel
from tests.servers import wait_for


def test_urls_the_store_cannot_use_are_refused_clearly():
    for url in ("redis+sentinel://127.0.0.1:1", "redis+cluster://127.0.0.1:1/3", "redis+cluster://nohost",
                "127.0.0.1:6379"):
        with pytest.raises(ValueError):
            connect(url)


@pytest.fixture
def cluster_client(make_app, redis_cluster):
    return make_app(redis_url=redis_cluster.url).test_client()


@pytest.mark.parametrize("topology", ["redis_sentinel", "redis_cluster"])
def test_batched_session_steps_span_slots_and_replicas(make_app, request, topology):
    """POST /predict/batch reads and writes many sessions in one pipelined round trip: on a cluster the keys
    live on different masters, on Sentinel one WAIT covers the batch's writes."""
    url = request.getfixturevalue(topology).url
    client = make_app(redis_url=url).test_client()
    sids = [client.post("/sessions").json["session_id"] for _ in range(12)]
    for words in ("the cat", "eats"):
        r = client.post("/predict/batch", json={"items": [{"text": words, "session_id": sid} for sid in sids]})
        assert r.status_code == 200, r.json
    assert [client.get(f"/sessions/{sid}").json["tokens"] for sid in sids] == [3] * len(sids)
    if topology == "redis_cluster":
        owners = {connect(url).keyslot(session_key(sid)) // 5462 for sid in sids}
        assert len(owners) > 1  # the batch did span masters


def _errorstats(client: redis_py.Redis) -> dict:
    return {k: v["count"] for k, v in client.info("errorstats").items()}


def test_sessions_follow_a_cluster_slot_migration_through_ask_and_moved(cluster_client, redis_cluster):
    sid = cluster_client.post("/sessions").json["session_id"]
    assert cluster_client.post("/predict", json={"text": "the cat", "session_id": sid}).status_code == 200
    key = session_key(sid)
    nodes = {node.port: LocalCluster.node_client(node) for node in redis_cluster.nodes}
    any_node = next(iter(nodes.values()))
    slot = any_node.cluster("keyslot", key)
    owner = next(port for port, c in nodes.items() if c.cluster("countkeysinslot", slot))
    target = next(port for port in nodes if port != owner)
    ids = {port: c.cluster("myid") for port, c in nodes.items()}
    source, destination = nodes[owner], nodes[target]
    try:
        destination.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[owner])
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        source.execute_command("MIGRATE", "127.0.0.1", target, key, 0, 5000)
        # the key now lives on the destination while the slot is still the source's: the source answers ASK
        assert cluster_client.post("/predict", json={"text": "eats", "session_id": sid}).status_code == 200
        assert _errorstats(source).get("errorstat_ASK", 0) >= 1
        for client in nodes.values():
            client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        # the service's slot map still names the source: it answers MOVED once, and the map is corrected
        assert cluster_client.post("/predict", json={"text": "fish", "session_id": sid}).status_code == 200
        assert _errorstats(source).get("errorstat_MOVED", 0) >= 1
        assert cluster_client.post("/predict", json={"text": ".", "session_id": sid}).status_code == 200
        assert cluster_client.get(f"/sessions/{sid}").json["tokens"] == 5
        assert destination.exists(key) and source.cluster("countkeysinslot", slot) == 0
    finally:
        for client in nodes.values():
            client.close()


def test_a_sentinel_failover_under_load_loses_no_acknowledged_write(service_factory, tmp_path):
    """Eight clients feed their own sessions one word at a time while the master is killed (SIGKILL). A 200 is an
    acknowledged write: afterwards every session holds at least as many tokens as it got 200s, and at most that
    plus the requests that failed (a failed write may or may not have been applied)."""
    topology = LocalSentinel(tmp_path / "sentinel").start()
    try:
        service = service_factory(redis=topology.url)
        sids = [requests.post(service.url + "/sessions", timeout=10).json()["session_id"] for _ in range(8)]
        acked = {sid: 0 for sid in sids}
        failed = {sid: 0 for sid in sids}
        statuses: set[int] = set()
        stop = threading.Event()

        def feed(sid: str) -> None:
            http = requests.Session()
            while not stop.is_set():
                try:
                    status = http.post(service.url + "/predict", json={"text": "the", "session_id": sid},
                                       timeout=10).status_code
                except requests.RequestException:
                    status = 0
                statuses.add(status)
                if status == 200:
                    acked[sid] += 1
                else:
                    failed[sid] += 1
                    time.sleep(0.05)

        threads = [threading.Thread(target=feed, args=(sid,)) for sid in sids]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            old_port = topology.master_port()
            before = sum(acked.values())
            os.kill(topology.server_on(old_port).pid, signal.SIGKILL)
            wait_for(lambda: topology.master_port() != old_port, timeout=30, what="a new master")
            new_port = topology.master_port()
            wait_for(lambda: sum(acked.values()) > before + 50, timeout=30, what="writes on the new master")
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert statuses <= {200, 503}, statuses
        assert sum(failed.values()) > 0  # the failover was seen, and answered 503 while it lasted
        for sid in sids:
            tokens = requests.get(f"{service.url}/sessions/{sid}", timeout=10).json()["tokens"]
            assert acked[sid] <= tokens <= acked[sid] + failed[sid], (sid, acked[sid], failed[sid], tokens)
        promoted = LocalSentinel.client(topology.server_on(new_port))
        assert promoted.info("replication")["role"] == "master"
        promoted.close()
        assert '"level": "error"' not in service.log()
    finally:
        topology.stop()
