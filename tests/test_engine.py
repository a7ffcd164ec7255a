"""service.engine and service.scheduler with a fake model (a few lines of numpy) and the real Redis session store."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from service.bundle import Bundle
from service.engine import BatchItem, Done, Engine, SessionState, Token
from service.errors import (ClientClosedRequest, Input, InvalidInput, ModelMismatch, Overloaded, PreconditionFailed,
                            ServiceError, SessionConflict, UnknownModel)
from service.http.errors import headers
from service.sampling import SamplingParams
from service.scheduler import Scheduler

WORDS = ("<eos>", "<unk>", "the", "cat", "sat", "on", "mat", ".", ",", "dog")


class FakeRuntime:
    """A deterministic 'RNN': h' = tanh(0.5 h + E[token]); log_probs = log_softmax(W h). State (1, 1, 4).

    Implements ModelRuntime.run row by row, so a row's result never depends on its batch; records every call."""

    provider = "FakeExecutionProvider"

    def __init__(self, name: str = "fake", digest: str = "f" * 64):
        manifest = {"architecture": "rnn_tanh", "layers": 1, "hidden_size": 4, "embedding_size": 4,
                    "vocab_size": len(WORDS), "special_tokens": {"unk": 1, "eos": 0},
                    "text": {"convention": "wikitext"}, "state": [{"input": "h0", "output": "hn"}]}
        self.bundle = Bundle(name=name, path=Path("."), manifest=manifest, words=WORDS, digest=digest)
        rng = np.random.default_rng(7)
        self.E = rng.normal(size=(len(WORDS), 4))
        self.W = rng.normal(size=(len(WORDS), 4)) * 2
        self.calls: list[np.ndarray] = []  # tokens (batch, seq) of every call
        self.fail_at: int | None = None  # the call number (1-based) that raises

    def zero_state(self):
        return np.zeros((1, 1, 4), dtype=np.float32)

    def run(self, tokens, states, with_log_probs=True):
        self.calls.append(tokens.copy())
        if self.fail_at == len(self.calls):
            raise RuntimeError("the fake model fails on purpose")
        out_lp, out_h = [], []
        for b in range(tokens.shape[0]):
            h = states[0, 0, b].astype(np.float64)
            for t in tokens[b]:
                h = np.tanh(0.5 * h + self.E[int(t)])
            logits = self.W @ h
            out_lp.append(logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
            out_h.append(h)
        log_probs = np.array(out_lp, dtype=np.float32) if with_log_probs else None
        return log_probs, np.array(out_h, dtype=np.float32)[None, None]  # (1, 1, batch, 4)


@pytest.fixture
def fake():
    return FakeRuntime()


@pytest.fixture
def engine(session_store, fake):
    engine = Engine({"fake": Scheduler(fake)}, session_store, "fake", max_text_tokens=20, cas_retries=3,
                    max_streams=2)
    yield engine
    for scheduler in engine.models.values():
        scheduler.close()


def test_session_blob_round_trips_and_rejects_other_sizes(engine):
    scheduler = engine.models["fake"]
    state = SessionState(np.full((1, 1, 4), 0.25, np.float32), np.full((1, 1, 4), -1.5, np.float32), 7)
    back = SessionState.decode(state.encode(), scheduler)
    assert back.last == 7 and np.array_equal(back.after, state.after) and np.array_equal(back.before, state.before)
    with pytest.raises(ModelMismatch):
        SessionState.decode(state.encode()[:-4], scheduler)
    nan = SessionState(np.full((1, 1, 4), np.nan, np.float32), state.before, 7)
    with pytest.raises(ModelMismatch):
        SessionState.decode(nan.encode(), scheduler)


def test_split_feeds_equal_one_feed_and_the_stateless_prediction(engine):
    a = engine.create_session(None, "").session_id
    b = engine.create_session(None, "").session_id
    engine.predict("the cat sat", session_id=a)
    split = engine.predict("on the mat", session_id=a)
    whole = engine.predict("the cat sat on the mat", session_id=b)
    stateless = engine.predict("the cat sat on the mat")
    np.testing.assert_allclose(split.log_probs, whole.log_probs, atol=1e-6)
    np.testing.assert_allclose(split.log_probs, stateless.log_probs, atol=1e-6)
    assert split.session.tokens == whole.session.tokens == 6


def test_a_prompt_prefix_runs_without_the_softmax_head(engine, fake):
    engine.predict("the cat sat", session_id=engine.create_session(None, "").session_id)
    assert [c.tolist() for c in fake.calls] == [[[2, 3]], [[4]]]  # prefix (state only), then the last token


def test_scores_are_each_tokens_probability_given_the_ones_before(engine):
    sid = engine.create_session(None, "").session_id
    first = engine.predict("the", session_id=sid)
    scored = engine.predict("cat sat", session_id=sid, scores=True)
    after_cat = engine.predict("the cat")
    assert scored.scores[0] == pytest.approx(np.exp(float(first.log_probs[3])), rel=1e-5)
    assert scored.scores[1] == pytest.approx(np.exp(float(after_cat.log_probs[4])), rel=1e-5)
    np.testing.assert_allclose(scored.log_probs, engine.predict("the cat sat").log_probs, atol=1e-6)
    assert scored.session.tokens == 3
    line_start = engine.predict("<eos>")  # no session: the first token is scored at the start of a line
    assert engine.predict("the", scores=True).scores[0] == pytest.approx(np.exp(float(line_start.log_probs[2])),
                                                                        rel=1e-5)


def test_reading_maps_unknown_words_and_enforces_limits(engine):
    result = engine.predict("the zebra sat")
    assert result.reading.tokens == ["the", "zebra", "sat"] and result.reading.unknown == ["zebra"]
    with pytest.raises(InvalidInput) as err:
        engine.predict("the " * 21)
    assert err.value.input is Input.TEXT  # in the domain's words: /predict names it `text`, OpenAI `prompt`
    with pytest.raises(InvalidInput):
        engine.predict("   ")
    with pytest.raises(UnknownModel):
        engine.predict("the", model="nope")


def test_session_of_another_bundle_version_is_a_conflict_not_a_reset(session_store):
    old = Engine({"fake": Scheduler(FakeRuntime(digest="a" * 64))}, session_store, "fake")
    new = Engine({"fake": Scheduler(FakeRuntime(digest="b" * 64))}, session_store, "fake")
    sid = old.create_session(None, "").session_id
    old.predict("the cat", session_id=sid)
    with pytest.raises(ModelMismatch):
        new.predict("sat", session_id=sid)
    assert session_store.get(sid, "").tokens == 2  # untouched
    for e in (old, new):
        e.models["fake"].close()


@pytest.fixture
def replica(session_store):
    """Another worker or replica on the same Redis."""
    other = Engine({"fake": Scheduler(FakeRuntime())}, session_store, "fake")
    yield other
    other.models["fake"].close()


def _race_once(engine, replica, monkeypatch, sid: str) -> list:
    """The next model step of `engine` first lets `replica` write "dog" to the session: a write between this
    request's read and its compare-and-set. Returns a list that holds True once the race happened."""
    scheduler = engine.models["fake"]
    original_submit, raced = scheduler.submit_many, []

    def racing_submit(*args, **kwargs):
        if not raced:
            raced.append(True)
            replica.predict("dog", session_id=sid)
        return original_submit(*args, **kwargs)

    monkeypatch.setattr(scheduler, "submit_many", racing_submit)
    return raced


def test_a_step_that_loses_the_race_is_rerun_on_the_fresh_state(engine, replica, monkeypatch):
    sid = engine.create_session(None, "").session_id
    raced = _race_once(engine, replica, monkeypatch, sid)
    result = engine.predict("cat", session_id=sid)
    monkeypatch.undo()
    assert raced and result.session.tokens == 2 and result.session.version == 2
    np.testing.assert_allclose(result.log_probs, engine.predict("dog cat").log_probs, atol=1e-6)


def test_a_named_version_is_checked_and_a_lost_race_is_412_not_a_rerun(engine, replica, session_store, monkeypatch):
    sid = engine.create_session(None, "").session_id
    assert engine.predict("the", session_id=sid, if_version=0).session.version == 1
    with pytest.raises(PreconditionFailed):
        engine.predict("cat", session_id=sid, if_version=0)  # a retry of the write above: not applied twice
    raced = _race_once(engine, replica, monkeypatch, sid)
    with pytest.raises(PreconditionFailed):
        engine.predict("cat", session_id=sid, if_version=1)
    assert raced and session_store.get(sid, "").tokens == 2  # "the" and the racer's "dog"


def test_a_batch_applies_items_in_order_and_isolates_failures(engine, session_store, fake):
    a = engine.create_session(None, "").session_id
    b = engine.create_session(None, "").session_id
    items = [BatchItem("the", a), BatchItem("cat sat", b), BatchItem("cat", a), BatchItem("   "),
             BatchItem("mat"), BatchItem("dog", "x" * 32), BatchItem("sat", a, if_version=2),
             BatchItem("on", a, if_version=0)]
    results = engine.predict_batch(items, "")
    assert isinstance(results[3], InvalidInput)  # no words
    assert isinstance(results[5], ServiceError) and results[5].code == "session_not_found"
    assert isinstance(results[7], PreconditionFailed)  # a's version was 2 by then
    assert [r.session.version for r in (results[0], results[2], results[6])] == [1, 2, 3]
    assert [r.session.tokens for r in (results[0], results[2], results[6])] == [1, 2, 3]
    assert session_store.get(a, "").version == 3 and session_store.get(b, "").tokens == 2
    for got, text in ((results[6], "the cat sat"), (results[1], "cat sat"), (results[4], "mat")):
        np.testing.assert_allclose(got.log_probs, engine.predict(text).log_probs, atol=1e-6)


def test_generation_without_prompt_continues_from_the_last_token(engine):
    sid = engine.create_session(None, "").session_id
    after = engine.predict("the cat", session_id=sid).log_probs
    events = list(engine.start_generation(sid, "", None, SamplingParams(temperature=1e-6), 3, []))
    allowed = after.copy()
    allowed[1] = -np.inf  # <unk> is never generated
    assert isinstance(events[0], Token) and events[0].id == int(np.argmax(allowed))
    assert events[0].probability == pytest.approx(float(np.exp(allowed.max())), abs=1e-5)
    done = events[-1]
    emitted = len(events) - 1
    assert isinstance(done, Done) and done.tokens == emitted
    assert done.finish_reason == ("length" if emitted == 3 else "eos")
    assert done.session.tokens == 2 + emitted


def test_a_closed_generation_commits_nothing(engine, session_store):
    sid = engine.create_session(None, "").session_id
    gen = engine.start_generation(sid, "", "the", SamplingParams(seed=3), 10, [])
    it = iter(gen)
    next(it), next(it)
    gen.close()  # what the WSGI server does when the client goes away
    record = session_store.get(sid, "")
    assert (record.version, record.tokens) == (0, 0)  # not even the prompt


def test_a_finished_generation_commits_prompt_and_tokens_and_replays_with_its_seed(engine, session_store):
    sid = engine.create_session(None, "").session_id
    events = list(engine.start_generation(sid, "", "the", SamplingParams(seed=3), 6, []))
    words = [e.word for e in events if isinstance(e, Token)]
    assert events[-1].session.tokens == 1 + len(words) == session_store.get(sid, "").tokens
    other = engine.create_session(None, "").session_id
    engine.predict(" ".join(["the", *words]), session_id=other)
    np.testing.assert_allclose(engine.predict("mat", session_id=sid).log_probs,
                               engine.predict("mat", session_id=other).log_probs, atol=1e-6)


def first_stream_tokens(engine: Engine, streams: int, prompt: str | None = None, max_tokens: int = 12) -> list[int]:
    """Starts `streams` generations at once on fresh sessions (the first with seed 11, the others with their own
    seeds) and returns the first one's token ids. Shared with tests/test_heads.py."""
    sids = [engine.create_session(None, "").session_id for _ in range(streams)]
    if prompt is None:
        for s in sids:
            engine.predict("the cat", session_id=s)
    gens = [engine.start_generation(s, "", prompt, SamplingParams(seed=11 if i == 0 else i), max_tokens, [])
            for i, s in enumerate(sids)]
    out: list[list[int]] = [[] for _ in gens]
    threads = [threading.Thread(target=lambda g=g, o=o: o.extend(e.id for e in g if isinstance(e, Token)))
               for g, o in zip(gens, out)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out[0]


def test_a_stream_gives_the_same_tokens_alone_and_batched_with_others(session_store, fake):
    # every scheduler call waits 20 ms for peers, so the streams started one after another do share calls
    engine = Engine({"fake": Scheduler(fake, batch_wait_ms=20)}, session_store, "fake", max_streams=8)
    alone = first_stream_tokens(engine, 1)
    fake.calls.clear()
    batched = first_stream_tokens(engine, 8)
    engine.close()
    assert alone == batched
    assert max(c.shape[0] for c in fake.calls) > 1  # the streams did share onnxruntime calls


def test_conflicting_write_during_generation_leaves_the_other_write(engine, session_store):
    sid = engine.create_session(None, "").session_id
    gen = engine.start_generation(sid, "", "the", SamplingParams(seed=1), 5, [])
    it = iter(gen)
    next(it)
    engine.predict("dog", session_id=sid)  # another request wins the session meanwhile
    with pytest.raises(SessionConflict):
        list(it)
    assert session_store.get(sid, "").tokens == 1  # only "dog": no mix of the two


def test_a_model_failure_mid_stream_is_an_error_and_commits_nothing(engine, session_store, fake):
    sid = engine.create_session(None, "").session_id
    gen = engine.start_generation(sid, "", "the", SamplingParams(seed=1), 8, [])
    fake.fail_at = len(fake.calls) + 3
    with pytest.raises(ServiceError) as err:
        list(gen)
    assert err.value.code == "model_unavailable"
    assert session_store.get(sid, "").version == 0
    engine.predict("the", session_id=sid)  # the scheduler thread survived


def test_stop_words_and_stream_cap(engine):
    sid = engine.create_session(None, "").session_id
    done = list(engine.start_generation(sid, "", "the", SamplingParams(seed=0), 50, list(WORDS[2:])))[-1]
    assert done.finish_reason in ("stop", "eos") and done.text == ""
    held = [engine.start_generation(sid, "", None, SamplingParams(), 1, []) for _ in range(2)]
    with pytest.raises(Overloaded) as err:
        engine.start_generation(sid, "", None, SamplingParams(), 1, [])
    assert headers(err.value) == {"Retry-After": "1"}  # through the HTTP layer's table
    for g in held:  # never iterated: closing still frees the slots, once however often it is called
        g.close()
        g.close()
    engine.start_generation(sid, "", None, SamplingParams(), 1, []).close()
    assert engine._streams._value == 2


class Flag:
    """A caller's cancellation, flipped by the test."""

    def __init__(self, cancelled: bool = False):
        self.cancelled = cancelled


def test_a_gone_callers_batch_runs_no_step_and_writes_nothing(engine, session_store, fake):
    sid = engine.create_session(None, "").session_id
    results = engine.predict_batch([BatchItem("the cat", sid), BatchItem("sat"), BatchItem("on", sid)], "",
                                   Flag(cancelled=True))
    assert all(isinstance(r, ClientClosedRequest) for r in results)
    assert fake.calls == [] and session_store.get(sid, "").version == 0


def test_one_callers_leaving_drops_only_its_items_from_a_shared_group(engine, session_store, fake, monkeypatch):
    """Two callers (one key) in one group commit, both on session s: A's item is stepped first, then A goes. At the
    write, s's chain is re-run without A's item, so B's item is written on the state without it, and B's other
    items are untouched; nothing of A's is written."""
    sid = engine.create_session(None, "").session_id
    a, b = Flag(), Flag()
    real = fake.run

    def run(tokens, states, with_log_probs=True):
        out = real(tokens, states, with_log_probs)
        if len(fake.calls) == 2:  # A's session item (the chain's first wave) has just been stepped
            a.cancelled = True
        return out

    monkeypatch.setattr(fake, "run", run)
    items = [BatchItem("dog"), BatchItem("the", sid), BatchItem("cat", sid), BatchItem("mat")]
    results = engine._apply(items, ["", "", "", ""], [b, a, b, b])
    assert isinstance(results[1], ClientClosedRequest)
    assert results[2].session.version == 1 and results[2].session.tokens == 1
    assert session_store.get(sid, "").tokens == 1  # "cat" alone: "the" was never written
    np.testing.assert_allclose(results[2].log_probs, engine.predict("cat").log_probs, atol=1e-6)
    assert [r.reading.tokens for r in (results[0], results[3])] == [["dog"], ["mat"]]


def test_a_drained_generation_whose_caller_goes_stops_and_commits_nothing(engine, session_store):
    sid = engine.create_session(None, "").session_id
    gone = Flag()
    generation = engine.start_generation(sid, "", "the cat", SamplingParams(seed=1), 20, [], cancel=gone)
    events = iter(generation)
    assert isinstance(next(events), Token)
    gone.cancelled = True
    with pytest.raises(ClientClosedRequest):
        next(events)
    assert generation.stream.cancelled and session_store.get(sid, "").version == 0
    with pytest.raises(ClientClosedRequest):  # found gone before it starts: no stream at all
        engine.start_generation(sid, "", "the", SamplingParams(), 5, [], cancel=gone)
