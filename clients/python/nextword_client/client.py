"""The Python client of the nextword HTTP API (docs/api.md): predict, batches, sessions and streamed
generation over Server-Sent Events. Knows HTTP (httpx, its one dependency) and the API's JSON, not the
service's internals.

    from nextword_client import Client

    with Client("http://127.0.0.1:8000") as nw:
        print(nw.predict("The game began")["predictions"][0]["word"])
        print(nw.suggest("The game began development in Ja")["predictions"][0]["word"])  # completes "Ja"
        sid = nw.create_session()["session_id"]
        for token in nw.generate(sid, "The game", max_tokens=20, seed=7):
            print(token.word, end=" ", flush=True)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
import unicodedata
from importlib.metadata import PackageNotFoundError, version

import httpx

from nextword_client.errors import APIError, StreamInterrupted, TransportError, api_error

DEFAULT_URL = "http://127.0.0.1:8000"  # where `make serve` listens
DEFAULT_TIMEOUT = 30.0  # seconds to connect, and between two chunks of an answer (a stream's tokens included)
SSE = "text/event-stream"

try:
    _VERSION = version("nextword-client")
except PackageNotFoundError:  # running from a source tree that was never installed
    _VERSION = "0"


@dataclass(frozen=True)
class Token:
    """One generated token, as its `event: token` carried it."""

    index: int  # 0 for the first generated token
    id: int  # vocabulary id
    word: str
    probability: float  # the probability it had in the distribution it was sampled from

    def __str__(self) -> str:
        return self.word


class Generation:
    """One streamed generation: iterate it for `Token`s as they arrive; then `.result` holds the
    `done` event's data (`finish_reason`, `text`, `tokens`, `model`, `session`).

    The request is sent when iteration starts. An `event: error` raises its typed `APIError`; a
    stream that ends without `done` raises `StreamInterrupted`. Breaking out of the loop (or
    `close()`) drops the connection, which the service treats as a disconnect: nothing of the generation
    is kept (docs/api.md, "What a generation commits").
    """

    def __init__(self, http: httpx.Client, session_id: str, body: dict, headers: dict | None = None):
        self._http, self.session_id, self._body, self._headers = http, session_id, body, headers or {}
        self.tokens: list[Token] = []  # every token received so far
        self.result: dict | None = None  # the done event's data, once it came
        self._events: Iterator[Token] | None = None

    def __iter__(self) -> Iterator[Token]:
        if self._events is not None:
            raise RuntimeError("a Generation can be iterated once")
        self._events = self._stream()
        return self._events

    def close(self) -> None:
        if self._events is not None:
            self._events.close()  # runs the stream's `with` exit: the connection is closed

    def __enter__(self) -> "Generation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stream(self) -> Iterator[Token]:
        path = f"/sessions/{self.session_id}/generate"
        try:
            with self._http.stream("POST", path, json=self._body, headers={"Accept": SSE, **self._headers}) as response:
                if response.status_code != 200:
                    response.read()
                    raise _error(response)
                for event, data in _sse_events(response):
                    if event == "token":
                        token = Token(data["index"], data["id"], data["word"], data["probability"])
                        self.tokens.append(token)
                        yield token
                    elif event == "done":
                        self.result = data
                        return
                    elif event == "error":
                        raise api_error(data, request_id=response.headers.get("X-Request-ID"))
        except (httpx.TransportError, _NotAStream, ValueError) as e:  # ValueError: an event's data is not JSON
            raise StreamInterrupted(f"the stream of session {self.session_id} broke after {len(self.tokens)} "
                                    f"tokens: {e}", self.session_id, list(self.tokens)) from e
        raise StreamInterrupted(f"the stream of session {self.session_id} ended after {len(self.tokens)} tokens "
                                "without a done event", self.session_id, list(self.tokens))


class _NotAStream(Exception):
    """A 200 answer to a stream request that is not an event stream (a proxy's page, say)."""


def _sse_events(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    """(event type, its JSON data) for each Server-Sent Event of `response`, as they arrive: `event:` and
    `data:` lines up to a blank line make one event; comment lines (`:`) and other fields are skipped."""
    kind = response.headers.get("Content-Type", "").partition(";")[0].strip()
    if kind != SSE:
        raise _NotAStream(f"expected {SSE}, got {kind or 'no content type'}")
    event, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)


class Client:
    """A connection pool to one nextword service. Thread-safe; close it (or use `with`) when done.

    Every method raises `APIError` (or its per-code subclass, e.g. `SessionNotFound`) when the
    service answers with an error, and `TransportError` when it does not answer.
    """

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        headers = {"User-Agent": f"nextword-client/{_VERSION}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=body, headers=headers)
        except httpx.TransportError as e:
            raise TransportError(f"{method} {self.base_url}{path}: {e or type(e).__name__}") from e
        if response.status_code >= 400:
            raise _error(response)
        return response

    # --- prediction ------------------------------------------------------------------------------

    def predict(self, text: str, model: str | None = None, top_k: int | None = None,
                session_id: str | None = None, scores: bool | None = None, if_version: int | None = None,
                prefix: str | None = None, case_sensitive: bool | None = None,
                words_only: bool | None = None) -> dict:
        """POST /predict: `{"model", "predictions": [{"word", "id", "probability"}], "tokens", "unknown"}`,
        plus `session` with a session, and `scores` (each token's probability given what came before it)
        when asked for. `if_version` (sent as If-Match): write only if the session is still at that version,
        else `PreconditionFailed` with nothing written, so a retry never applies a text twice.

        `prefix`: the characters typed so far of the next word; only words starting with them are ranked
        (case-insensitively unless `case_sensitive`), and `filter` holds how many matched and their mass.
        `text` may then be empty (a line's first word, or with a session the word after what it has read:
        nothing is written). `words_only`: no `<unk>`, punctuation or corpus placeholders."""
        body = _fields(text=text, model=model, top_k=top_k, session_id=session_id, scores=scores, prefix=prefix,
                       case_sensitive=case_sensitive, words_only=words_only)
        return self._call("POST", "/predict", body, _if_match(if_version)).json()

    def suggest(self, typed: str, model: str | None = None, top_k: int | None = None,
                session_id: str | None = None, words_only: bool = True, case_sensitive: bool | None = None) -> dict:
        """What a keyboard shows for `typed`, the text as typed so far: its trailing letters and digits are the
        word in progress (`prefix`), the rest the complete words before it (`text`), as in `split_typed`. Words
        only by default. With a session, `typed` is what to add to it: the complete words are fed, the prefix
        never is."""
        text, prefix = split_typed(typed)
        return self.predict(text, model=model, top_k=top_k, session_id=session_id, prefix=prefix,
                            case_sensitive=case_sensitive, words_only=words_only)

    def predict_batch(self, items: list[dict]) -> list[dict | APIError]:
        """POST /predict/batch: one answer per item, in order. Each item is a `predict` call's fields
        (`text`, and optionally `model`, `top_k`, `session_id`, `prefix`, `case_sensitive`, `words_only`,
        `if_version`); each answer is what `predict` returns,
        or, for an item that failed, its typed `APIError` (returned, not raised, so one bad item does not
        hide the others). A request the service refuses as a whole raises as usual."""
        results = self._call("POST", "/predict/batch", {"items": items}).json()["results"]
        return [api_error(r, status=r.get("status")) if "error" in r else r for r in results]

    def models(self) -> dict:
        """GET /models: `{"default": name, "models": [...]}`."""
        return self._call("GET", "/models").json()

    # --- sessions --------------------------------------------------------------------------------

    def create_session(self, model: str | None = None) -> dict:
        """POST /sessions: the new session (`session_id`, `model`, `tokens`, `version`, `expires_at`, ...)."""
        return self._call("POST", "/sessions", _fields(model=model)).json()

    def get_session(self, session_id: str) -> dict:
        """GET /sessions/<id>: how many tokens the session has read, its version and expiry."""
        return self._call("GET", f"/sessions/{session_id}").json()

    def delete_session(self, session_id: str) -> None:
        """DELETE /sessions/<id>."""
        self._call("DELETE", f"/sessions/{session_id}")

    def generate(self, session_id: str, text: str | None = None, max_tokens: int | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, stop: list[str] | None = None,
                 if_version: int | None = None) -> Generation:
        """POST /sessions/<id>/generate as a stream: iterate the result for `Token`s as they are sampled.

        `text` is fed to the session first. Fields left as None take the service's defaults. A generation
        that ends (`done`) becomes part of the session; a cut one leaves it unchanged (see
        `StreamInterrupted`). `if_version` as in `predict`."""
        body = _fields(text=text, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       seed=seed, stop=stop)
        return Generation(self._http, session_id, body, _if_match(if_version))


def split_typed(typed: str) -> tuple[str, str]:
    """(the complete words, the word in progress) of a text as typed: the word in progress is its trailing
    letters, digits and combining marks. `"The game began in Ja"` gives `("The game began in ", "Ja")`, `"in "`
    gives `("in ", "")`, `"Ja"` gives `("", "Ja")`."""
    start = len(typed)
    while start and (typed[start - 1].isalnum() or unicodedata.category(typed[start - 1]).startswith("M")):
        start -= 1
    text = typed[:start]
    return (text if text.strip() else ""), typed[start:]


def _if_match(version: int | None) -> dict:
    return {} if version is None else {"If-Match": f'"{version}"'}


def _fields(**values) -> dict:
    """The request body: only the fields given, so the service applies its own defaults to the rest."""
    return {name: value for name, value in values.items() if value is not None}


def _error(response: httpx.Response) -> APIError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return api_error(body, status=response.status_code, retry_after=response.headers.get("Retry-After"),
                     request_id=response.headers.get("X-Request-ID"))
