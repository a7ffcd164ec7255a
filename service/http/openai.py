"""POST /v1/completions: OpenAI's legacy completions API on top of the engine's generations, so the `openai`
client and tools built on it work unchanged (and GET /v1/models, which such tools list models with). POST
/v1/chat/completions answers, in OpenAI's error shape, that these are completion models. Knows Flask and OpenAI's
wire shapes, not Redis or onnxruntime.

Each request is one generation. Without the non-standard `session_id` it runs on a temporary session, created
for it and deleted after it (the endpoint stays stateless); with it, the prompt and the generated words are
committed to that session by the engine's rule (docs/api.md, "What a generation commits"). The model predicts words,
so a "token" here is a word of the model's vocabulary; `text` joins them the way the model's text convention
writes them (a leading space where one belongs). A stop word or `<eos>` that ends a generation is left out of
`text` and `logprobs` and counted in `usage.completion_tokens` (the session consumed it).

`logprobs` (0-5): for each token of `text`, its log-probability and the k most likely alternatives under the
model's own distribution (before temperature and top-p), from `Generation.distribution`: the first exactly as
sampled, each later one by one more model step. Streaming and the drained JSON share one generator of pieces.
A request is costed against the work budget (service/budget.py) first: its prompt, `max_tokens`, the replay and
alternatives of `logprobs`. The drained answer's client is watched while it runs: one that goes away stops it.
Errors under /v1/ are OpenAI's `{"error": {"message", "type", "param", "code"}}` (service/http/responses.py), so
the `openai` client's exceptions carry `param` and `type`; a mid-stream failure is an `event: error` whose data is
that object, which the client raises.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from flask import Blueprint, Response, g, jsonify, stream_with_context

from service.engine import Done, Generation
from service.errors import (InternalError, ModelMismatch, ModelUnavailable, Overloaded, ServiceError,
                            SessionConflict, SessionNotFound, StateStoreFull, StateStoreUnavailable, UnknownModel)
from service.http import answers
from service.http.api import JSON, Reply, route
from service.http.context import services
from service.http.disconnect import watching
from service.http.responses import SSE, SSE_HEADERS, StreamTimer, sse_data, sse_error
from service.http.validation import json_body, parse, within_budget
from service.sampling import SamplingParams, top_k
from service.tokenizer import EOS, detokenize, tokenize

bp = Blueprint("openai", __name__, url_prefix="/v1")
log = logging.getLogger("nextword")

LOGPROB_FLOOR = -9999.0  # what a probability of 0 is reported as (JSON has no -Infinity)
_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
# A session's earlier words are not stored, yet the first generated word must be spaced as if it followed them:
# the joiner starts from this word in their place. Any plain word would do (a convention spaces what follows it
# as it spaces what follows a word); "a" is a short one that no convention rewrites.
_JOINER = "a"


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompt: str
    max_tokens: int
    params: SamplingParams
    stop: list[str]
    logprobs: int | None
    stream: bool
    include_usage: bool
    session_id: str | None


@dataclass(frozen=True)
class Piece:
    """One token of `text`: its characters and, with `logprobs`, its log-probability and the alternatives."""

    text: str
    logprob: float | None = None
    top: dict[str, float] | None = None


class _Joiner:
    """Writes words after a context as the text convention would, one piece per word, so the pieces concatenate
    to the completion. A piece is what the joined text grew by; where the convention rewrites earlier text
    (rarely: `15 – 18` becomes `15–18`), the word is written after a space instead. Only the last `WINDOW` words
    are joined each time (spacing is local), so a piece costs the same however long the prompt; a double quote
    left open before the window is kept open by one in front of it."""

    WINDOW = 32

    def __init__(self, context: list[str], convention: str):
        self.convention = convention
        self.tokens = list(context[-self.WINDOW:])
        self.quote = context[:-self.WINDOW].count('"') % 2 == 1 if len(context) > self.WINDOW else False
        self.joined = self._detokenize(self.tokens)

    def _detokenize(self, tokens: list[str]) -> str:
        return detokenize(['"', *tokens] if self.quote else tokens, self.convention)

    def _join(self, word: str) -> tuple[str, str]:
        """(the piece `word` adds, the joined text with it)"""
        joined = self._detokenize(self.tokens + [word])
        if joined.startswith(self.joined):
            return joined[len(self.joined):], joined
        space = "" if not self.joined or self.joined.endswith("\n") else " "
        return space + detokenize([word], self.convention), joined

    def piece(self, word: str) -> str:
        return self._join(word)[0]

    def add(self, word: str) -> str:
        piece, self.joined = self._join(word)
        self.tokens.append(word)
        if len(self.tokens) > self.WINDOW:
            self.quote ^= self.tokens.pop(0) == '"'
            self.joined = self._detokenize(self.tokens)
        return piece


def _stop_words(stop: list[str], convention: str) -> list[str]:
    """The stops that are one word as the model reads text (only such a word can end a generation; the others
    never match, as with /generate's `stop`). Line breaks alone are `<eos>`, which always ends it anyway."""
    words = []
    for v in stop:
        tokens = tokenize(v, convention)
        if len(tokens) == 1 or (tokens and set(tokens) == {EOS}):
            words.append(tokens[0])
    return words


def _request() -> CompletionRequest:
    req = parse(services().shapes.completion, json_body())
    greedy = req.top_p == 0  # top_p 0 keeps only the most likely word: greedy, as temperature 0 is
    return CompletionRequest(
        model=req.model, prompt=req.prompt, max_tokens=req.max_tokens,
        params=SamplingParams(temperature=0.0 if greedy else req.temperature, top_p=1.0 if greedy else req.top_p,
                              seed=req.seed),
        stop=req.stop, logprobs=req.logprobs, stream=req.stream,  # stream_options mean nothing without stream
        include_usage=req.stream_options is not None and req.stream_options.include_usage, session_id=req.session_id)


def _check_budget(req: CompletionRequest) -> None:
    budget = services().budget
    cost = budget.generation(req.prompt or None, req.model, req.max_tokens, session=req.session_id is not None,
                             logprobs=req.logprobs)
    listed = "logprobs" if req.logprobs else "max_tokens"
    within_budget(budget, cost, "max_tokens", listed, what="this completion")


def _start(req: CompletionRequest, cancel=None) -> tuple[Generation, str | None]:
    """The generation, and the temporary session to delete after it (None when the request named its session);
    `cancel`: the client, watched."""
    engine = services().engine
    if req.session_id is None:
        record = engine.create_session(req.model, g.owner)
        temporary = record.session_id
    else:
        record, temporary = engine.session_info(req.session_id, g.owner), None
        engine.model(req.model)  # an unknown model is a 404, as without a session; another one, the engine's 409
    try:
        stop = _stop_words(req.stop, engine.model(record.model).bundle.convention)
        return engine.start_generation(record.session_id, g.owner, req.prompt, req.params, req.max_tokens,
                                       stop, cancel=cancel, model=req.model), temporary
    except BaseException:
        _discard(temporary)
        raise


def _discard(temporary: str | None) -> None:
    """Deletes a temporary session; one that cannot be deleted now (Redis away) expires by its TTL."""
    if temporary is None:
        return
    try:
        services().engine.delete_session(temporary, g.owner)
    except ServiceError:
        pass


def _logprob(value) -> float:
    """JSON has no -Infinity: a word of probability 0 gets OpenAI's floor."""
    return max(float(value), LOGPROB_FLOOR)


def _pieces(generation: Generation, logprobs: int | None, timing: StreamTimer, log_fields: dict
            ) -> Iterator[Piece | Done]:
    """The generation as pieces of `text` (a stop word or `<eos>` that ends it yields none), then its Done."""
    bundle = generation.scheduler.bundle
    if generation.reading is not None:
        context = generation.reading.tokens
    else:  # continuing a session without a prompt: its words are not stored; a joiner word gives the spacing
        context = [_JOINER] if generation.record.tokens else []
    joiner = _Joiner(context, bundle.convention)
    for event in generation:
        if isinstance(event, Done):
            yield event
            return
        timing.token()
        log_fields["generated"] += 1
        if event.id == bundle.eos or event.id in generation.stream.stop_ids:
            continue  # it ended the generation: no piece of `text`
        # on CUDA a row lives on the device: it comes over whole, as the chosen word's logprob needs it anyway
        log_probs = np.asarray(generation.distribution(event)) if logprobs is not None else None
        if log_probs is None:
            yield Piece(joiner.add(event.word))
            continue
        top = {}
        if logprobs:
            ids, _ = top_k(log_probs, logprobs)
            for i in ids.tolist():
                top.setdefault(joiner.piece(bundle.words[i]), _logprob(log_probs[i]))
        yield Piece(joiner.add(event.word), _logprob(log_probs[event.id]), top)


def _logprobs_view(pieces: list[Piece], offset: int = 0) -> answers.Logprobs:
    offsets, at = [], offset
    for p in pieces:
        offsets.append(at)
        at += len(p.text)
    return {"tokens": [p.text for p in pieces], "token_logprobs": [p.logprob for p in pieces],
            "top_logprobs": [p.top for p in pieces], "text_offset": offsets}


def _usage(generation: Generation, done: Done | None) -> answers.Usage:
    prompt = len(generation.reading.tokens) if generation.reading is not None else 0
    completion = done.tokens if done is not None else generation.generated
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chunk(cid: str, created: int, model: str, choices: list, **extra) -> str:
    data = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices, **extra}
    return sse_data(data)


@route(bp, "POST", "/completions", operation_id="createCompletion", tag="openai", request="completion", budget=True,
       errors=(UnknownModel, SessionNotFound, ModelMismatch, SessionConflict, Overloaded, StateStoreUnavailable,
               ModelUnavailable, StateStoreFull),
       replies=(Reply(200, "The completion.", {JSON: answers.Completion, SSE: answers.CompletionEvent}),),
       notes={400: "`max_tokens` above {max_generate_tokens} is a 400, not clamped; so is an OpenAI field at a value "
                   "that is not served (`n` 2, penalties, `echo`, ...). `logprobs` costs one more model step per "
                   "token and lists its alternatives."})
def completions():
    """OpenAI-compatible completions (the `openai` client with base_url .../v1)

    OpenAI's legacy completions API over one generation. A token is a word of the model's vocabulary; `text` joins
    them as the model's text convention writes them. `finish_reason` is `stop` (a stop word or `<eos>`, left out of
    `text`) or `length`. With `stream`, `data: {chunk}` events in OpenAI's shape (`object: text_completion`, one
    choice whose `text` is one token, then one with the `finish_reason`), then `data: [DONE]`; a failure mid-stream
    is an `event: error` whose data is an OpenAIError (no [DONE]). Errors are OpenAIError objects (`message`,
    `type`, `param`, `code`), which the `openai` client's exceptions carry. A non-streaming request whose client
    goes away stops at its next token and commits nothing.
    """
    started = time.perf_counter()
    req = _request()
    _check_budget(req)
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        generation, temporary = _start(req)
        pieces = _pieces(generation, req.logprobs, _started(req, generation, started), g.log)
        return _event_stream(req, generation, temporary, pieces, cid, created)
    with watching() as client:  # drained: the client is watched while the completion runs
        generation, temporary = _start(req, client)
        pieces = _pieces(generation, req.logprobs, _started(req, generation, started), g.log)
        try:
            with generation:
                shown: list[Piece] = []
                for item in pieces:
                    if isinstance(item, Done):
                        done = item
                    else:
                        shown.append(item)
        finally:
            _discard(temporary)
    text = "".join(p.text for p in shown)
    answer: answers.Completion = {
        "id": cid, "object": "text_completion", "created": created, "model": done.model,
        "choices": [{"text": text, "index": 0, "logprobs": _logprobs_view(shown) if req.logprobs is not None else None,
                     "finish_reason": _FINISH[done.finish_reason]}],
        "usage": _usage(generation, done)}
    return jsonify(answer)


def _started(req: CompletionRequest, generation: Generation, started: float) -> StreamTimer:
    g.log.update(model=generation.model, greedy=req.params.greedy, generated=0,
                 tokens=len(generation.reading.tokens) if generation.reading else 0)
    return StreamTimer(generation.model, started)


def _event_stream(req: CompletionRequest, generation: Generation, temporary: str | None,
                  pieces: Iterator[Piece | Done], cid: str, created: int) -> Response:
    """OpenAI's chunks: one per piece of `text`, one with the finish reason, with `include_usage` one with the
    usage and no choices, then `data: [DONE]`. A failure is an `event: error` with the service's error and no
    [DONE]. The WSGI server closes the response when the client goes away or after the last chunk: that close
    cancels the generation (nothing is committed) and deletes a temporary session."""
    model, owner = generation.model, g.owner
    usage = {"usage": None} if req.include_usage else {}
    engine = services().engine

    def events():
        offset = 0
        try:
            for item in pieces:
                if isinstance(item, Done):
                    yield _chunk(cid, created, model, [{"text": "", "index": 0, "logprobs": None,
                                                        "finish_reason": _FINISH[item.finish_reason]}], **usage)
                    if req.include_usage:
                        yield _chunk(cid, created, model, [], usage=_usage(generation, item))
                    yield "data: [DONE]\n\n"
                    return
                logprobs = _logprobs_view([item], offset) if req.logprobs is not None else None
                offset += len(item.text)
                yield _chunk(cid, created, model, [{"text": item.text, "index": 0, "logprobs": logprobs,
                                                    "finish_reason": None}], **usage)
        except ServiceError as error:
            yield sse_error(error)
        except Exception:  # noqa: BLE001 - logged; the client gets the same JSON error as a 500 would carry
            log.exception("completion failed")
            yield sse_error(InternalError("internal error during generation"))

    def close() -> None:
        generation.close()
        if temporary is not None:
            try:
                engine.delete_session(temporary, owner)
            except ServiceError:
                pass  # it expires by its TTL

    response = Response(stream_with_context(events()), mimetype=SSE, headers=SSE_HEADERS)
    response.call_on_close(close)
    return response


def _model_object(bundle) -> answers.OpenAIModel:
    # OpenAI's `created` is when the model was made: the bundle's export time, or its ONNX file's mtime (Bundle.created)
    return {"id": bundle.name, "object": "model", "created": bundle.created[0], "owned_by": "nextword"}


@route(bp, "GET", "/models", operation_id="listOpenAIModels", tag="openai",
       replies=(Reply(200, "Every loaded model.", {JSON: answers.OpenAIModelList}),))
def models():
    """The loaded models in OpenAI's shape (what `client.models.list()` reads)"""
    answer: answers.OpenAIModelList = {"object": "list",
                                       "data": [_model_object(m.bundle) for m in services().engine.models.values()]}
    return jsonify(answer)


@route(bp, "GET", "/models/<name>", operation_id="getOpenAIModel", tag="openai", errors=(UnknownModel,),
       replies=(Reply(200, "The model.", {JSON: answers.OpenAIModel}),))
def model(name: str):
    """One model in OpenAI's shape"""
    return jsonify(_model_object(services().engine.model(name).bundle))


def openai_error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> Response:
    """An error in OpenAI's own shape, which clients that speak only OpenAI's API print as they are."""
    answer: answers.OpenAIError = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    response = jsonify(answer)
    response.status_code = status
    return response


@route(bp, "POST", "/chat/completions", operation_id="createChatCompletion", tag="openai",
       replies=(Reply(404, "Always.", {JSON: answers.OpenAIError}),))
def chat_completions():
    """Not served: the models are completion models (use /v1/completions)

    Tools that speak only OpenAI's chat API get a readable answer instead of a bare 404: a 404 in OpenAI's error
    shape (`type` `invalid_request_error`, `code` `not_a_chat_model`) pointing to POST /v1/completions. The body is
    not read.
    """
    return openai_error(404, "The nextword models are completion models, not chat models: they continue a text "
                             "word by word and have no chat format, so /v1/chat/completions is not served. Send the "
                             "text to continue as `prompt` to POST /v1/completions.",
                        "invalid_request_error", param="model", code=answers.NOT_A_CHAT_MODEL)
