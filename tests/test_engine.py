"""service.engine with a fake model (a few lines of numpy) and the real Redis session store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.bundle import Bundle
from service.engine import Engine, SessionState
from service.errors import InvalidInput, ModelMismatch, Overloaded, SessionConflict, UnknownModel
from service.sampling import SamplingParams

WORDS = ("<eos>", "<unk>", "the", "cat", "sat", "on", "mat", ".", ",", "dog")


class FakeRuntime:
    """A deterministic 'RNN': h' = tanh(0.5 h + E[token]); log_probs = log_softmax(W h). State (1, 1, 4)."""

    def __init__(self, name: str = "fake", digest: str = "f" * 64):
        manifest = {"architecture": "rnn_tanh", "layers": 1, "hidden_size": 4, "embedding_size": 4,
                    "vocab_size": len(WORDS), "special_tokens": {"unk": 1, "eos": 0},
                    "text": {"convention": "wikitext"}, "state": [{"input": "h0", "output": "hn"}]}
        self.bundle = Bundle(name=name, path=Path("."), manifest=manifest, words=WORDS, digest=digest)
        rng = np.random.default_rng(7)
        self.E = rng.normal(size=(len(WORDS), 4))
        self.W = rng.normal(size=(len(WORDS), 4)) * 2
        self.calls: list[list[int]] = []

    def zero_state(self):
        return np.zeros((1, 1, 4), dtype=np.float32)

    def step(self, tokens, state=None):
        self.calls.append([int(t) for t in tokens])
        h = (self.zero_state() if state is None else state)[0, 0].astype(np.float64)
        for t in tokens:
            h = np.tanh(0.5 * h + self.E[int(t)])
        logits = self.W @ h
        log_probs = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        return log_probs.astype(np.float32), h.astype(np.float32).reshape(1, 1, 4)


@pytest.fixture
def engine(session_store):
    return Engine({"fake": FakeRuntime()}, session_store, "fake", max_text_tokens=20, cas_retries=3, max_streams=2)


def test_session_blob_round_trips_and_rejects_other_sizes(engine):
    rt = engine.runtimes["fake"]
    state = SessionState(np.full((1, 1, 4), 0.25, np.float32), np.full((1, 1, 4), -1.5, np.float32), 7)
    back = SessionState.decode(state.encode(), rt)
    assert back.last == 7 and np.array_equal(back.after, state.after) and np.array_equal(back.before, state.before)
    with pytest.raises(ModelMismatch):
        SessionState.decode(state.encode()[:-4], rt)
    nan = SessionState(np.full((1, 1, 4), np.nan, np.float32), state.before, 7)
    with pytest.raises(ModelMismatch):
        SessionState.decode(nan.encode(), rt)


def test_split_feeds_equal_one_feed_and_the_stateless_prediction(engine):
    a = engine.create_session(None, "")["session_id"]
    b = engine.create_session(None, "")["session_id"]
    engine.predict("the cat sat", session_id=a)
    split = engine.predict("on the mat", session_id=a)
    whole = engine.predict("the cat sat on the mat", session_id=b)
    stateless = engine.predict("the cat sat on the mat")
    np.testing.assert_allclose(split.log_probs, whole.log_probs, atol=1e-6)
    np.testing.assert_allclose(split.log_probs, stateless.log_probs, atol=1e-6)
    assert split.session["tokens"] == whole.session["tokens"] == 6


def test_reading_maps_unknown_words_and_enforces_limits(engine):
    result = engine.predict("the zebra sat")
    assert result.reading.tokens == ["the", "zebra", "sat"] and result.reading.unknown == ["zebra"]
    with pytest.raises(InvalidInput) as err:
        engine.predict("the " * 21)
    assert err.value.field == "text"
    with pytest.raises(InvalidInput):
        engine.predict("   ")
    with pytest.raises(UnknownModel):
        engine.predict("the", model="nope")


def test_session_of_another_bundle_version_is_a_conflict_not_a_reset(session_store):
    old = Engine({"fake": FakeRuntime(digest="a" * 64)}, session_store, "fake")
    sid = old.create_session(None, "")["session_id"]
    old.predict("the cat", session_id=sid)
    new = Engine({"fake": FakeRuntime(digest="b" * 64)}, session_store, "fake")
    with pytest.raises(ModelMismatch):
        new.predict("sat", session_id=sid)
    assert session_store.get(sid, "").tokens == 2  # untouched


def test_a_step_that_loses_the_race_is_rerun_on_the_fresh_state(engine, session_store):
    sid = engine.create_session(None, "")["session_id"]
    rt = engine.runtimes["fake"]
    original_step = rt.step
    raced = []

    def racing_step(tokens, state=None):
        if not raced:  # another replica writes between this request's read and its write
            raced.append(True)
            engine.predict("dog", session_id=sid)
        return original_step(tokens, state)

    rt.step = racing_step
    result = engine.predict("cat", session_id=sid)
    rt.step = original_step
    assert result.session["tokens"] == 2
    reference = engine.predict("dog cat")
    np.testing.assert_allclose(result.log_probs, reference.log_probs, atol=1e-6)


def test_generation_without_prompt_continues_from_the_last_token(engine):
    sid = engine.create_session(None, "")["session_id"]
    after = engine.predict("the cat", session_id=sid).log_probs
    gen = engine.start_generation(sid, "", None, SamplingParams(temperature=1e-6), 3, [])
    events = list(gen)
    first = events[0]["data"]
    allowed = after.copy()
    allowed[1] = -np.inf  # <unk> is never generated
    assert first["id"] == int(np.argmax(allowed))
    assert first["probability"] == pytest.approx(float(np.exp(allowed.max())), abs=1e-5)
    done = events[-1]
    emitted = len(events) - 1
    assert done["event"] == "done" and done["data"]["tokens"] == emitted
    assert done["data"]["finish_reason"] == ("length" if emitted == 3 else "eos")
    assert done["data"]["session"]["tokens"] == 2 + emitted


def test_disconnect_commits_exactly_the_emitted_tokens(engine, session_store):
    sid = engine.create_session(None, "")["session_id"]
    gen = engine.start_generation(sid, "", "the", SamplingParams(seed=3), 10, [])
    it = iter(gen)
    words = [next(it)["data"]["word"], next(it)["data"]["word"]]
    it.close()  # what the WSGI server does when the client goes away
    record = session_store.get(sid, "")
    assert record.tokens == 1 + 2
    other = engine.create_session(None, "")["session_id"]
    engine.predict(" ".join(["the", *words]), session_id=other)
    np.testing.assert_allclose(engine.predict("mat", session_id=sid).log_probs,
                               engine.predict("mat", session_id=other).log_probs, atol=1e-6)


def test_conflicting_write_during_generation_leaves_the_other_write(engine, session_store):
    sid = engine.create_session(None, "")["session_id"]
    gen = engine.start_generation(sid, "", "the", SamplingParams(seed=1), 5, [])
    it = iter(gen)
    next(it)
    engine.predict("dog", session_id=sid)  # another request wins the session meanwhile
    with pytest.raises(SessionConflict):
        list(it)
    assert session_store.get(sid, "").tokens == 1  # only "dog": no mix of the two


def test_stop_words_and_stream_cap(engine):
    sid = engine.create_session(None, "")["session_id"]
    gen = engine.start_generation(sid, "", "the", SamplingParams(seed=0), 50, list(WORDS[2:]))
    done = list(gen)[-1]["data"]
    assert done["finish_reason"] in ("stop", "eos") and done["text"] == ""
    held = [engine.start_generation(sid, "", None, SamplingParams(), 1, []) for _ in range(2)]
    with pytest.raises(Overloaded):
        engine.start_generation(sid, "", None, SamplingParams(), 1, [])
    for g in held:  # never iterated: closing still frees the slots
        g.close()
    engine.start_generation(sid, "", None, SamplingParams(), 1, []).close()
