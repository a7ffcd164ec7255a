"""Shared pytest fixtures. Each section belongs to one area of tests; append new sections below."""

from __future__ import annotations

import contextlib
import inspect
import random
import shutil
from pathlib import Path

import pytest

from service.config import Settings
from service.http.app import create_app
from service.redis_client import connect
from service.process.redis_server import RedisServer
from service.state import SessionStore
from tests.redis_topologies import LocalCluster, LocalSentinel
from tests.servers import ServiceProcess
from training.export import export
from training.model import ModelConfig
from training.train import TrainConfig, train

# ======================================================================================
# training fixtures (tests/test_training_*.py): a tiny corpus, tiny trained checkpoints,
# and a tiny exported bundle (usable by contract tests that serve a real model).
# Session-scoped: every training run is cached and shared by all tests that ask for it.
# ======================================================================================

TRAINING_OOV_WORD = "zebra"  # appears in valid.txt and test.txt, never in train.txt -> <unk>

# Eight subjects, each with its own two verbs and two objects: the next word is predictable from
# the previous ones, so even an 8-unit model learns something in a few steps.
_SUBJECTS = {
    "the cat": (["eats", "chases"], ["fish", "mice"]),
    "a dog": (["barks", "fetches"], ["sticks", "balls"]),
    "the bird": (["sings", "builds"], ["songs", "nests"]),
    "my friend": (["reads", "writes"], ["books", "letters"]),
    "the farmer": (["plants", "grows"], ["corn", "wheat"]),
    "a child": (["draws", "paints"], ["pictures", "houses"]),
    "the baker": (["bakes", "sells"], ["bread", "cakes"]),
    "our teacher": (["explains", "grades"], ["lessons", "tests"]),
}
_ADVERBS = ["today", "again", "slowly", "quickly"]


def _tiny_lines(rng: random.Random, n: int, oov_every: int = 0) -> list[str]:
    lines = []
    for i in range(n):
        subject = rng.choice(sorted(_SUBJECTS))
        verbs, objects = _SUBJECTS[subject]
        words = [subject, rng.choice(verbs), rng.choice(objects)]
        if rng.random() < 0.3:
            words.append(rng.choice(_ADVERBS))
        if oov_every and i % oov_every == 0:
            words.append(TRAINING_OOV_WORD)
        words.append(".")
        lines.append(" " + " ".join(words) + " \n")  # WikiText layout: leading space, " \n" at the end
    return lines


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A WikiText-style corpus folder (train/valid/test.txt), ~40 words, a few hundred lines."""
    folder = tmp_path_factory.mktemp("tiny_corpus")
    rng = random.Random(20240601)
    for split, n, oov_every in (("train", 400, 0), ("valid", 80, 9), ("test", 80, 7)):
        (folder / f"{split}.txt").write_text("".join(_tiny_lines(rng, n, oov_every)), encoding="utf-8")
    return folder


def _tiny_configs(data: Path, out: Path, **overrides):
    """(TrainConfig, ModelConfig) for a seconds-long run; keyword overrides go to whichever has the field."""
    tc = TrainConfig(data=str(data), out=str(out), device="cpu", batch_size=4, eval_batch_size=4, bptt=8,
                     optimizer="adam", lr=0.02, schedule="plateau", warmup_steps=0, clip=1.0, epochs=1, budget_minutes=0, max_steps=20,
                     seed=1234, threads=1)
    mc = ModelConfig(architecture="lstm", embedding_size=12, hidden_size=12, layers=2, dropout=0.0,
                     dropout_input=0.0, dropout_hidden=0.0, dropout_embedding=0.0, weight_drop=0.0, tied=False,
                     softmax="full", cutoffs=[6, 14], div_value=2.0)
    for key, value in overrides.items():
        if hasattr(tc, key):
            setattr(tc, key, value)
        elif hasattr(mc, key):
            setattr(mc, key, value)
        else:
            raise KeyError(f"no TrainConfig or ModelConfig field {key!r}")
    return tc, mc


@pytest.fixture(scope="session")
def tiny_configs(tiny_corpus):
    """configs(out, **overrides) -> fresh (TrainConfig, ModelConfig) for a tiny run on tiny_corpus."""
    return lambda out, **overrides: _tiny_configs(tiny_corpus, out, **overrides)


def _made_once(root: Path, prefix: str, make):
    """run(**overrides) -> root/<prefix><n>, filled by make(folder, **overrides) once per distinct overrides."""
    cache: dict[tuple, Path] = {}

    def run(**overrides) -> Path:
        key = tuple(sorted((k, repr(v)) for k, v in overrides.items()))
        if key not in cache:
            out = root / f"{prefix}{len(cache)}"
            make(out, **overrides)
            cache[key] = out
        return cache[key]

    return run


@pytest.fixture(scope="session")
def tiny_trained(tiny_corpus, tmp_path_factory):
    """train(**overrides) -> run folder holding best.pt/last.pt; runs with equal overrides are trained once."""
    return _made_once(tmp_path_factory.mktemp("tiny_runs"), "run",
                      lambda out, **overrides: train(*_tiny_configs(tiny_corpus, out, **overrides)))


@pytest.fixture(scope="session")
def tiny_exported(tiny_trained, tiny_corpus, tmp_path_factory):
    """export(**train_overrides) -> bundle folder exported (with measured perplexity) from tiny_trained."""
    return _made_once(tmp_path_factory.mktemp("tiny_bundles"), "bundle",
                      lambda out, **overrides: export(str(tiny_trained(**overrides) / "best.pt"), str(out), name="tiny",
                                                      data=str(tiny_corpus), verify_steps=5))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_exported) -> Path:
    """A read-only tiny 2-layer LSTM bundle (model.onnx + vocab.txt + manifest.json). Copy before changing it."""
    return tiny_exported()


@pytest.fixture
def tiny_bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of tiny_bundle that a test may tamper with."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))

# ======================================================================================
# end of training fixtures
# ======================================================================================


# ======================================================================================
# Redis fixtures (tests/test_state.py and anything that needs a session store): a real
# redis-server child process (service/process/redis_server.py), cleaned before and after each test.
#   redis_server       session-scoped shared server (persist=False); never stop it in a test
#   redis_url          its URL, FLUSHALL before and after the test
#   session_store      a SessionStore on redis_url (ttl 60 s)
#   restartable_redis  a private server for "Redis down" tests: .stop(), .start(), .url
#                      (the same port and URL after a restart; data is not kept)
#   redis_cluster      session-scoped 3-master Redis Cluster (tests/redis_topologies.py)
#   redis_sentinel     session-scoped master + 2 replicas + 3 sentinels; never fail it over in a test
#   redis_topology     which of them redis_url points at: "single" unless parametrized; the tests of
#                      TOPOLOGY_MODULES that reach redis_url only through other fixtures run on all three
# ======================================================================================

TOPOLOGIES = ("single", "sentinel", "cluster")
TOPOLOGY_MODULES = {"test_http_sessions", "test_generate"}


def _redis_flushall(url: str) -> None:
    client = connect(url)
    try:
        client.flushall()
    finally:
        client.close()


def pytest_generate_tests(metafunc):
    """The session and generation suites run against every topology, except tests that talk to Redis directly
    (they ask for redis_url or a private server themselves)."""
    if metafunc.module.__name__.rpartition(".")[2] not in TOPOLOGY_MODULES:
        return
    own = inspect.signature(metafunc.function).parameters
    if "redis_topology" in metafunc.fixturenames and "redis_url" not in own and "restartable_redis" not in own:
        metafunc.parametrize("redis_topology", TOPOLOGIES, indirect=True)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory):
    sentinel = LocalSentinel(tmp_path_factory.mktemp("redis-sentinel")).start()
    yield sentinel
    sentinel.stop()


@pytest.fixture
def redis_topology(request) -> str:
    return getattr(request, "param", "single")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(request, redis_topology) -> str:
    server = {"single": "redis_server", "sentinel": "redis_sentinel", "cluster": "redis_cluster"}[redis_topology]
    url = request.getfixturevalue(server).url
    _redis_flushall(url)
    yield url
    _redis_flushall(url)


@pytest.fixture
def session_store(redis_url):
    store = SessionStore.from_url(redis_url, ttl_seconds=60)
    yield store
    store.close()


@pytest.fixture
def restartable_redis(tmp_path):
    server = RedisServer(tmp_path / "restartable-redis", persist=False)
    server.start()
    yield server
    server.stop()

# ======================================================================================
# end of Redis fixtures
# ======================================================================================


# ======================================================================================
# service fixtures (tests/test_http_*.py, test_engine*.py): a models folder holding tiny
# bundles exported by training/ (an LSTM as "tiny-lstm", a tanh RNN as "tiny-rnn"), and a
# Flask app built by create_app on the real Redis above.
#   models_dir        session-scoped folder of bundles (read-only)
#   make_settings     make_settings(**overrides) -> Settings for models_dir + redis_url
#   make_app          make_app(**setting overrides) or make_app(settings) -> an app, closed after the test
#   app / client      a fresh app per test and its test client
# ======================================================================================


@pytest.fixture(scope="session")
def models_dir(tiny_exported, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_exported(), folder / "tiny-lstm")
    shutil.copytree(tiny_exported(architecture="rnn_tanh"), folder / "tiny-rnn")
    return folder


@pytest.fixture
def make_settings(models_dir, redis_url):
    def make(**overrides) -> Settings:
        base = dict(models_dir=models_dir, redis_url=redis_url, default_model="tiny-lstm", device="cpu",
                    session_ttl_seconds=60, log_level="warning")
        return Settings(**{**base, **overrides})

    return make


@pytest.fixture
def make_app(make_settings):
    apps = []

    def make(settings: Settings | None = None, **overrides):
        apps.append(create_app(settings if settings is not None else make_settings(**overrides)))
        return apps[-1]

    yield make
    for application in apps:
        application.extensions["nextword"].engine.close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()

# ======================================================================================
# end of service fixtures
# ======================================================================================


# ======================================================================================
# process fixtures: the real service under gunicorn (tests/servers.py)
#   service_factory   service_factory(workers=1, **NEXTWORD_env) -> a started ServiceProcess on
#                     models_dir + redis_url; every one started is stopped after the test. A test
#                     that asks for it is marked `slow`: starting and stopping gunicorn takes ~3 s
#   module_service    module_service(**NEXTWORD_env) -> a started 1-worker ServiceProcess on models_dir and
#                     the shared redis_server, kept for the whole test module (its tests must leave it as
#                     they found it); every one started is stopped after the module
# ======================================================================================


def pytest_collection_modifyitems(items):
    for item in items:
        if "service_factory" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def service_factory(models_dir, redis_url, tmp_path):
    started: list[ServiceProcess] = []

    def start(workers: int = 1, redis: str | None = None, **env: str) -> ServiceProcess:
        proc = ServiceProcess(models_dir, redis or redis_url, tmp_path / "services", workers=workers, **env)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def module_service(models_dir, redis_server, tmp_path_factory):
    with contextlib.ExitStack() as started:
        yield lambda **env: started.enter_context(
            ServiceProcess(models_dir, redis_server.url, tmp_path_factory.mktemp("service"), workers=1, **env))

# ======================================================================================
# end of process fixtures
# ======================================================================================
