"""The Python client (nextword_client) against the real service under gunicorn, on the real Redis and
the tiny exported bundles: answers equal the raw HTTP API's, errors arrive typed with their code,
status and field, and a generation streams token by token and reports a cut stream.

The service is paced (NEXTWORD_BATCH_WAIT_MS, as in tests/test_generate.py) so a stream lasts long
enough to be cut in the middle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

import nextword_client
from nextword_client import (APIError, Client, InvalidInput, PreconditionFailed, SessionNotFound, StreamInterrupted, Token,
                             TransportError, Unauthorized, UnknownModel)
from nextword_client.errors import CODES
from service.http.errors import ERROR_TYPES, STATUS
from tests.servers import ROOT, free_port
from tests.test_generate import LONG, PACE_MS, PROMPT, long_seed


CLIENT_DIR = ROOT / "clients" / "python"


@pytest.fixture(scope="module")
def service(module_service):
    return module_service(NEXTWORD_BATCH_WAIT_MS=str(PACE_MS))


@pytest.fixture
def nw(service):
    with Client(service.url) as client:
        yield client


def raw(service, path: str, body: dict) -> dict:
    response = requests.post(service.url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_predict_returns_what_the_api_returns(nw, service):
    assert nw.predict("the cat", top_k=3) == raw(service, "/predict", {"text": "the cat", "top_k": 3})
    answer = nw.predict("a dog", model="tiny-rnn", top_k=2)
    assert answer["model"] == "tiny-rnn" and len(answer["predictions"]) == 2
    assert answer == raw(service, "/predict", {"text": "a dog", "model": "tiny-rnn", "top_k": 2})


def test_the_clients_own_error_table_is_the_services():
    """The client carries its own copy of the codes (it imports nothing of the service); this keeps them equal."""
    service_table = {(kind.__name__, kind.code, STATUS[kind]) for kind in ERROR_TYPES}
    client_table = {(name, code, status) for name, code, status, _ in CODES}
    assert client_table == service_table, (f"add to clients/python/nextword_client/errors.py: "
                                           f"{sorted(service_table - client_table)}; remove: {sorted(client_table - service_table)}")
    for kind in ERROR_TYPES:
        cls = getattr(nextword_client, kind.__name__)
        assert issubclass(cls, APIError) and (cls.code, cls.status) == (kind.code, STATUS[kind])


def test_the_client_imports_nothing_of_the_service():
    code = ("import sys, nextword_client, nextword_client.cli; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'flask', 'redis', 'onnxruntime')); "
            "sys.exit(f'imported {bad}' if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=CLIENT_DIR, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(CLIENT_DIR)})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("call, cls, status, field", [
    (lambda nw: nw.predict("the cat", model="no-such-model"), UnknownModel, 404, None),
    (lambda nw: nw.predict("the cat", top_k=0), InvalidInput, 400, "top_k"),
    (lambda nw: nw.predict("   "), InvalidInput, 400, "text"),
    (lambda nw: nw.get_session("nope"), SessionNotFound, 404, "session_id"),
    (lambda nw: nw.delete_session("nope"), SessionNotFound, 404, "session_id"),
    (lambda nw: list(nw.generate("nope", "the")), SessionNotFound, 404, "session_id"),
])
def test_errors_are_typed_with_code_status_and_field(nw, call, cls, status, field):
    with pytest.raises(cls) as caught:
        call(nw)
    error = caught.value
    assert (error.code, error.status) == (cls.code, status)
    if field is not None:
        assert error.field == field
    assert error.message and error.request_id
    assert cls.code in str(error)


def test_sessions_create_show_predict_delete(nw):
    session = nw.create_session("tiny-rnn")
    sid = session["session_id"]
    assert (session["model"], session["tokens"], session["version"]) == ("tiny-rnn", 0, 0)
    answer = nw.predict("the cat eats", session_id=sid)
    assert answer["session"]["tokens"] == 3
    shown = nw.get_session(sid)
    assert (shown["tokens"], shown["version"]) == (3, 1)
    nw.delete_session(sid)
    with pytest.raises(SessionNotFound):
        nw.get_session(sid)


def test_generate_streams_the_same_tokens_as_the_drained_api(nw, service, client):
    seed, drained = long_seed(client, 6)
    sid = nw.create_session()["session_id"]
    generation = nw.generate(sid, PROMPT, max_tokens=6, seed=seed)
    tokens = list(generation)
    assert all(isinstance(t, Token) for t in tokens)
    assert [t.__dict__ for t in tokens] == drained["token_details"]
    assert generation.tokens == tokens
    result = generation.result
    assert (result["finish_reason"], result["text"], result["tokens"]) == ("length", drained["text"], 6)
    assert result["session"]["tokens"] == 2 + 6 == nw.get_session(sid)["tokens"]


def test_generate_sends_every_sampling_field(nw, service):
    """temperature ~0 is argmax: the same words whatever the seed; a stop word ends the stream."""
    sid_a, sid_b = nw.create_session()["session_id"], nw.create_session()["session_id"]
    a = [t.word for t in nw.generate(sid_a, PROMPT, max_tokens=4, temperature=1e-6, top_k=5, top_p=0.9, seed=1)]
    b = [t.word for t in nw.generate(sid_b, PROMPT, max_tokens=4, temperature=1e-6, top_k=5, top_p=0.9, seed=2)]
    assert a == b
    sid_c = nw.create_session()["session_id"]
    generation = nw.generate(sid_c, PROMPT, max_tokens=4, temperature=1e-6, stop=[a[0]])
    assert [t.word for t in generation] == [a[0]] and generation.result["finish_reason"] == "stop"


def test_a_bad_generate_field_is_invalid_input_before_any_token(nw):
    sid = nw.create_session()["session_id"]
    with pytest.raises(InvalidInput) as caught:
        list(nw.generate(sid, PROMPT, max_tokens=10**6))
    assert caught.value.field == "max_tokens"


def test_leaving_a_stream_early_commits_nothing_and_a_guarded_retry_is_exactly_once(nw, service, client):
    """Breaking out of the loop drops the connection: the session is unchanged (docs/api.md: "What a
    generation commits"). Sent again with if_version, the same seed gives the same tokens, once."""
    seed, drained = long_seed(client, LONG)
    sid = nw.create_session()["session_id"]
    with nw.generate(sid, PROMPT, max_tokens=LONG, seed=seed) as generation:
        received = [t.word for _, t in zip(range(3), generation)]
    assert received == [d["word"] for d in drained["token_details"][:3]]
    time.sleep((LONG + 4) * PACE_MS / 1000)  # past the moment the generation would have ended by itself
    assert nw.get_session(sid)["version"] == 0
    again = nw.generate(sid, PROMPT, max_tokens=LONG, seed=seed, if_version=0)
    assert [t.word for t in again] == [d["word"] for d in drained["token_details"]]
    assert again.result["session"]["version"] == 1
    with pytest.raises(PreconditionFailed):  # the same retry once more: it was applied, so it is refused
        list(nw.generate(sid, PROMPT, max_tokens=LONG, seed=seed, if_version=0))
    assert nw.get_session(sid)["tokens"] == 2 + LONG


def test_a_server_dying_mid_stream_raises_stream_interrupted(service_factory, client):
    seed, drained = long_seed(client, LONG)
    proc = service_factory(NEXTWORD_BATCH_WAIT_MS=str(PACE_MS))
    with Client(proc.url) as nw:
        sid = nw.create_session()["session_id"]
        received = []
        with pytest.raises(StreamInterrupted) as caught:
            for token in nw.generate(sid, PROMPT, max_tokens=LONG, seed=seed):
                received.append(token)
                if len(received) == 2:
                    os.killpg(proc.proc.pid, signal.SIGKILL)  # every process of the service, at once
    error = caught.value
    assert error.session_id == sid
    assert error.tokens == received and 2 <= len(received) < LONG
    assert [t.word for t in received] == [d["word"] for d in drained["token_details"][:len(received)]]


def test_an_unreachable_service_is_a_transport_error():
    with Client(f"http://127.0.0.1:{free_port()}", timeout=5) as nw:
        with pytest.raises(TransportError):
            nw.predict("the cat")


def test_the_api_key_is_sent_as_a_bearer_token(service_factory):
    proc = service_factory(NEXTWORD_API_KEYS="key-one,key-two")
    with Client(proc.url, api_key="key-two") as nw:
        sid = nw.create_session()["session_id"]
        assert nw.get_session(sid)["session_id"] == sid
    with Client(proc.url) as anonymous, pytest.raises(Unauthorized) as caught:
        anonymous.predict("the cat")
    assert caught.value.status == 401
    with Client(proc.url, api_key="key-one") as other, pytest.raises(SessionNotFound):
        other.get_session(sid)  # a session belongs to the key that made it


def test_predict_batch_answers_each_item_or_its_typed_error(nw, service):
    sid = nw.create_session()["session_id"]
    results = nw.predict_batch([{"text": "the cat", "top_k": 2}, {"text": "a dog", "model": "no-such-model"},
                                {"text": "the bird", "session_id": sid}])
    assert len(results) == 3
    assert results[0] == raw(service, "/predict", {"text": "the cat", "top_k": 2})
    assert isinstance(results[1], UnknownModel) and results[1].status == 404
    assert results[2]["session"]["tokens"] == 2


@pytest.mark.parametrize("typed, text, prefix", [
    ("The game began development in Ja", "The game began development in ", "Ja"),
    ("the cat ", "the cat ", ""),
    ("Ja", "", "Ja"),
    ("", "", ""),
    ("  ca", "", "ca"),
    ("Hello,", "Hello,", ""),
    ("Hello,wor", "Hello,", "wor"),
    ("1,00", "1,", "00"),
    ("caf\u00e9", "", "caf\u00e9"),
    ("cafe\u0301", "", "cafe\u0301"),
    ("snake_ca", "snake_", "ca"),
])
def test_split_typed(typed, text, prefix):
    assert nextword_client.split_typed(typed) == (text, prefix)


def test_prefix_and_suggest_return_what_the_api_returns(nw, service):
    body = {"text": "the cat", "prefix": "E", "case_sensitive": False, "words_only": True, "top_k": 3}
    assert nw.predict("the cat", prefix="E", case_sensitive=False, words_only=True, top_k=3) == raw(
        service, "/predict", body)
    assert nw.suggest("the cat E", top_k=3) == raw(service, "/predict", {**body, "text": "the cat "})
    assert nw.suggest("b")["filter"]["prefix"] == "b"  # a line's first word: an empty text
    sid = nw.create_session()["session_id"]
    fed = nw.suggest("the cat e", session_id=sid, top_k=3)  # the complete words are fed, the prefix is not
    assert fed["session"]["tokens"] == 2 and fed["predictions"] == raw(service, "/predict", {
        **body, "text": "the cat", "prefix": "e"})["predictions"]
    again = nw.suggest("ea", session_id=sid, top_k=3)
    assert again["session"]["version"] == 1 and again["filter"]["prefix"] == "ea"
    with pytest.raises(InvalidInput) as e:
        nw.predict("the cat", prefix="a b")
    assert e.value.field == "prefix"
