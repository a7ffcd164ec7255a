"""The work budget of one request: what it would make the service do, counted from the request alone before any
of it is done, and refused past the limits in the settings. Knows the bundles' vocabularies and text conventions;
knows nothing of HTTP, Redis or onnxruntime.

Three quantities are bounded per request, by every endpoint that reaches a model (docs/limits.md):
- tokens: tokens the model reads or generates for it: every item's text, a scoring pass (one step more), a
  generation's prompt and `max_tokens`, the replay that OpenAI's `logprobs` costs (NEXTWORD_MAX_REQUEST_TOKENS);
- predictions: words the answer lists: `top_k` of every item, scores, a generation's tokens, `logprobs`
  alternatives (NEXTWORD_MAX_REQUEST_PREDICTIONS);
- answer bytes: an upper bound on the answer's size, from the two above, the request's text and the longest
  word the answer may carry; the whole vector's bytes for application/octet-stream (NEXTWORD_MAX_RESPONSE_BYTES).
A request past one of them is an `InvalidInput` naming the quantity (`Input.TOKENS`, `PREDICTIONS`, `ANSWER`;
the HTTP layer names the field that asks for it) and the limit's variable. A text is
counted with the text convention of the model that reads it; a session's model is known only once it is read, so
its items are counted with every loaded convention, and the largest count stands.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from service.bundle import Bundle
from service.errors import Input, InvalidInput
from service.tokenizer import tokenize

# JSON bytes around a listed word, its id and its probability; and around one token of a generation
_PREDICTION_BYTES = len(b'{"word":,"id":,"probability":},') + 24  # 24: the longest repr of a float
_TOKEN_BYTES = len(b'{"index":,"id":,"word":,"probability":},') + 2 * 12 + 24
_FIXED_BYTES = 2048  # the rest of an answer: model name, a session's view, usage, ids


@dataclass(frozen=True)
class Cost:
    """What one request asks for."""

    tokens: int = 0
    predictions: int = 0
    answer_bytes: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.tokens + other.tokens, self.predictions + other.predictions,
                    self.answer_bytes + other.answer_bytes)


class Budget:
    """The limits of one worker's settings over its loaded bundles."""

    def __init__(self, bundles: dict[str, Bundle], default: str, max_tokens: int, max_predictions: int,
                 max_answer_bytes: int):
        self.bundles, self.default = bundles, default
        self.max_tokens, self.max_predictions, self.max_answer_bytes = max_tokens, max_predictions, max_answer_bytes
        self._conventions = sorted({b.convention for b in bundles.values()})
        # per bundle: the bytes one listed word can take at most (the longest word, as JSON, and its id)
        self._word_bytes = {name: max(len(orjson.dumps(w)) for w in b.words) + len(str(b.vocab_size))
                            for name, b in bundles.items()}

    # --- what a text costs -----------------------------------------------------------------------------------------

    def tokens(self, text: str, model: str | None, session: bool = False) -> int:
        """Tokens `text` is read as: by the named (or default) model, or for a session whose model is not named,
        the most any loaded convention reads."""
        bundle = self.bundles.get(model or ("" if session else self.default))
        conventions = [bundle.convention] if bundle is not None else self._conventions
        return max(len(tokenize(text, c)) for c in conventions)

    def word_bytes(self, model: str | None, session: bool = False) -> int:
        name = model or ("" if session else self.default)
        return self._word_bytes[name] if name in self._word_bytes else max(self._word_bytes.values())

    @staticmethod
    def echo_bytes(text: str, tokens: int) -> int:
        """Bytes of the `tokens` and `unknown` lists that echo a text: a convention writes a byte as at most three
        (`-` is `@-@`; JSON escapes only `"` and `\\`, as two, and the tokenizer drops control characters), and each
        token adds its quotes and comma."""
        return 2 * (3 * len(text.encode("utf-8")) + 3 * tokens)

    # --- per endpoint ------------------------------------------------------------------------------------------------

    def item(self, text: str, model: str | None, top_k: int, session: bool, scores: bool = False) -> Cost:
        """One /predict (JSON) or /predict/batch item."""
        n = self.tokens(text, model, session)
        word = self.word_bytes(model, session)
        listed = top_k + (n if scores else 0)
        answer = top_k * (_PREDICTION_BYTES + word) + self.echo_bytes(text, n) + _FIXED_BYTES
        if scores:
            answer += n * (_PREDICTION_BYTES + word)
        return Cost(n + 1 if scores else n, listed, answer)

    def vector(self, text: str, model: str | None, session: bool, scores: bool = False) -> Cost:
        """/predict as application/octet-stream: the whole distribution of the session's (or named) model."""
        n = self.tokens(text, model, session)
        bundle = self.bundles.get(model or ("" if session else self.default))
        vocab = bundle.vocab_size if bundle is not None else max(b.vocab_size for b in self.bundles.values())
        return Cost(n + 1 if scores else n, 0, 4 * vocab + _FIXED_BYTES)

    def generation(self, prompt: str | None, model: str | None, max_tokens: int, session: bool,
                   logprobs: int | None = None) -> Cost:
        """A generation (native or OpenAI): its prompt, the tokens it may sample (each listed, with `logprobs`
        alternatives, each re-fed once for their distribution)."""
        n = self.tokens(prompt, model, session) if prompt else 1  # no prompt: at most one step to start
        word = self.word_bytes(model, session)
        replay = max_tokens if logprobs is not None else 0
        alternatives = max_tokens * (logprobs or 0)
        answer = (max_tokens * (_TOKEN_BYTES + 2 * word) + alternatives * (_PREDICTION_BYTES + word)
                  + (self.echo_bytes(prompt, n) if prompt else 0) + _FIXED_BYTES)
        return Cost(n + max_tokens + replay, max_tokens + alternatives, answer)

    # --- the check -----------------------------------------------------------------------------------------------------

    def check(self, cost: Cost, what: str = "this request") -> None:
        """Raises InvalidInput naming the quantity to reduce when `cost` passes a limit."""
        if cost.tokens > self.max_tokens:
            raise InvalidInput(f"{what} would have the model read or generate {cost.tokens} tokens; the limit is "
                               f"{self.max_tokens} (NEXTWORD_MAX_REQUEST_TOKENS): send less text or ask for fewer "
                               "tokens", input=Input.TOKENS)
        if cost.predictions > self.max_predictions:
            raise InvalidInput(f"{what} would list {cost.predictions} words; the limit is {self.max_predictions} "
                               "(NEXTWORD_MAX_REQUEST_PREDICTIONS): ask for fewer", input=Input.PREDICTIONS)
        if cost.answer_bytes > self.max_answer_bytes:
            raise InvalidInput(f"{what} could take up to {cost.answer_bytes} bytes to answer; the limit is "
                               f"{self.max_answer_bytes} (NEXTWORD_MAX_RESPONSE_BYTES)", input=Input.ANSWER)
