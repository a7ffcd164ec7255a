// The nextword playground: live next-word bars while typing, click or Tab to accept a word, a streamed
// continuation, and each word coloured by how surprising the model found it; optionally a second model
// side by side on the same text. Talks to the service's public HTTP API only (the same calls as
// docs/api.md); no framework, no build step.
//
// As a phone keyboard does, the letters typed after the last space are the word in progress: they go
// as `prefix` (never fed to a session), so the bars complete that word, and only words a person would
// pick are shown (`words_only`: no <unk>, punctuation or corpus placeholders).
//
// Typing stays responsive at one key every 100 ms: requests are debounced, a stateless request made
// stale by a newer keystroke is aborted, and every answer carries the number of the request it
// answers, so an old answer never overwrites a newer one. In session mode each finished word is fed
// once to a server-side session; those feeds are sent one at a time (an aborted feed may still have
// been applied), so the session always holds exactly `state.fed`.
"use strict";

(() => {
  const TOP_K = 10;  // bars shown
  const DEBOUNCE_MS = 60;  // below the 100 ms between keys of a fast typist: one request per pause
  const SSE = "text/event-stream";
  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"), sessionMode: $("session-mode"), key: $("api-key"), text: $("text"), surprise: $("surprise"),
    bars: $("bars"), temperature: $("temperature"), topP: $("top-p"), maxTokens: $("max-tokens"),
    generate: $("generate"), stop: $("stop"), status: $("status"),
    compare: $("compare"), modelB: $("model-b"), barsB: $("bars-b"), surpriseB: $("surprise-b"),
    preset: $("preset-cliff"),
  };
  // The article's example: a fact stated, a long stretch about other things, then a word that needs the fact.
  const CLIFF = "I have a dog named Cliff. He is a good dog and likes to play in the garden. We go for long walks " +
    "in the park every morning, and in the evening we sit by the fire. The weather here is often cold and wet in " +
    "the winter, but the summers are warm and long. My neighbours have two cats and a large garden with many old " +
    "trees. Last year we travelled to the coast, where we stayed in a small house near the sea for two weeks. " +
    "When I come home, the first to greet me is my pet d";

  const state = {
    seq: 0,  // number of the newest prediction request; answers to older ones are not shown
    epoch: 0,  // bumped when the model or the mode changes
    timer: 0,  // the pending debounce
    inflight: null,  // AbortController of the running stateless prediction
    session: null,  // session mode: {id, model}
    fed: "",  // session mode: the text the session has read, exactly
    feeding: null,  // session mode: the promise of the feed in flight
    scored: [],  // [{word, probability}] of the text shown in the surprise view
    streaming: null,  // AbortController of the running generation
    top: null,  // the first suggestion shown, which Tab accepts
    seqB: 0,  // number of the newest request of the compared model
    inflightB: null,  // AbortController of the compared model's running request
  };

  // The text as typed -> {text: the complete words, prefix: the word in progress (its trailing letters,
  // digits and combining marks)}; the same rule as nextword_client.split_typed.
  function splitTyped(typed) {
    const prefix = typed.match(/[\p{L}\p{N}\p{M}]*$/u)[0];
    const text = typed.slice(0, typed.length - prefix.length);
    return {text: text.trim() ? text : "", prefix};
  }

  // --- HTTP ----------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const error = body && body.error ? body.error : {code: `http_${status}`, message: `HTTP ${status}`};
      super(error.message);
      Object.assign(this, {status, code: error.code, field: error.field || null});
    }
  }

  function headers(accept = "application/json") {
    const h = {"Content-Type": "application/json", "Accept": accept};
    const key = ui.key.value.trim();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  async function api(method, path, body, signal) {
    const response = await fetch(path, {method, headers: headers(), signal,
                                        body: body === undefined ? undefined : JSON.stringify(body)});
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // The words after the text that complete the prefix, and each token's probability given the tokens
  // before it (`scores`).
  function predict(body, signal) {
    return api("POST", "/predict", {...body, scores: true, words_only: true}, signal);
  }

  // Reads an event stream from a fetch response (EventSource cannot POST): calls on[type](data).
  async function readEvents(response, on) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let type = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) type = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length && on[type]) on[type](JSON.parse(data.join("\n")));
      }
    }
  }

  // --- what the page shows ---------------------------------------------------------------------------

  function setStatus(text, error = false) {
    ui.status.textContent = text;
    ui.status.classList.toggle("error", error);
  }

  function showError(e) {
    setStatus(e instanceof ApiError ? `${e.code}: ${e.message}` : `cannot reach the service: ${e.message}`, true);
  }

  const label = (word) => (word === "<eos>" ? "↵ (end of line)" : word);

  // The suggestions of the model the page types with (list `ui.bars`: Tab takes the first), or of the
  // compared one. `filter` says what the bars are out of: the completions of the prefix, or all words.
  function showBars(predictions, filter, list = ui.bars) {
    const top = predictions.length ? predictions[0].probability : 1;
    if (list === ui.bars) state.top = predictions.length ? predictions[0].word : null;
    list.dataset.matches = filter ? String(filter.matches) : "";
    list.title = filter && filter.prefix
      ? `${filter.matches} words start with “${filter.prefix}”: ${(100 * filter.mass).toFixed(1)}% of the ` +
        "probability, shown renormalised" : "";
    if (filter && filter.prefix && !predictions.length) {
      const none = Object.assign(document.createElement("li"), {className: "none",
                                                                textContent: `no word starts with “${filter.prefix}”`});
      list.replaceChildren(none);
      return;
    }
    list.replaceChildren(...predictions.map((p) => {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.word = p.word;
      button.title = `accept “${p.word}”`;
      const word = Object.assign(document.createElement("span"), {className: "word", textContent: label(p.word)});
      const bar = Object.assign(document.createElement("span"), {className: "bar"});
      bar.style.width = `${(100 * p.probability) / top}%`;
      const prob = Object.assign(document.createElement("span"), {className: "p",
                                                                 textContent: `${(100 * p.probability).toFixed(1)}%`});
      button.append(word, bar, prob);
      button.addEventListener("click", () => accept(p.word));
      const item = document.createElement("li");
      item.append(button);
      return item;
    }));
  }

  // Colour from the surprisal in bits: 0 bits green, 12 or more red.
  function colour(probability) {
    const bits = -Math.log2(Math.max(probability, 1e-12));
    return `hsl(${Math.round(120 * (1 - Math.min(bits, 12) / 12))} 70% 80%)`;
  }

  function showSurprise(scored = state.scored, box = ui.surprise) {
    box.replaceChildren(...scored.map((t) => {
      if (t.word === "<eos>") return Object.assign(document.createElement("div"), {className: "break"});
      const span = Object.assign(document.createElement("span"), {textContent: t.word});
      if (t.probability !== undefined) {
        span.style.background = colour(t.probability);
        span.title = `p = ${t.probability.toPrecision(3)} (${(-Math.log2(t.probability)).toFixed(1)} bits)`;
      }
      return span;
    }));
  }

  function clearPrediction() {
    ui.bars.replaceChildren();
    state.top = null;
    state.scored = [];
    showSurprise();
    ui.barsB.replaceChildren();
    ui.surpriseB.replaceChildren();
  }

  // --- predictions while typing ----------------------------------------------------------------------

  function schedule(delay = DEBOUNCE_MS) {
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, delay);
  }

  function refresh() {
    if (state.streaming) return;  // the generation updates the text itself; refreshed when it ends
    if (ui.sessionMode.checked) feedSession();
    else predictStateless(ui.text.value);
    if (ui.compare.checked) predictCompared(ui.text.value);
  }

  async function predictStateless(typed) {
    const seq = ++state.seq;
    if (state.inflight) state.inflight.abort();  // its answer would be stale
    if (!typed.trim()) {
      clearPrediction();
      return;
    }
    const controller = (state.inflight = new AbortController());
    const started = performance.now();
    try {
      const answer = await predict({...splitTyped(typed), model: ui.model.value || null, top_k: TOP_K},
                                   controller.signal);
      if (seq !== state.seq) return;
      showBars(answer.predictions, answer.filter);
      state.scored = answer.scores;
      showSurprise();
      setStatus(`${answer.tokens.length} tokens read · ${Math.round(performance.now() - started)} ms`);
    } catch (e) {
      if (e.name !== "AbortError" && seq === state.seq) showError(e);
    }
  }

  // The second model on the same text, always stateless: its bars and its colours beside the first's.
  async function predictCompared(typed) {
    const seq = ++state.seqB;
    if (state.inflightB) state.inflightB.abort();
    if (!typed.trim() || !ui.modelB.value) {
      ui.barsB.replaceChildren();
      ui.surpriseB.replaceChildren();
      return;
    }
    const controller = (state.inflightB = new AbortController());
    try {
      const answer = await predict({...splitTyped(typed), model: ui.modelB.value, top_k: TOP_K}, controller.signal);
      if (seq !== state.seqB) return;
      showBars(answer.predictions, answer.filter, ui.barsB);
      showSurprise(answer.scores, ui.surpriseB);
    } catch (e) {
      if (e.name !== "AbortError" && seq === state.seqB) showError(e);
    }
  }

  async function newSession() {
    const old = state.session;
    state.session = null;
    state.fed = "";
    state.scored = [];
    if (old) api("DELETE", `/sessions/${old.id}`).catch(() => {});  // an idle one would expire anyway
    const created = await api("POST", "/sessions", {model: ui.model.value || null});
    state.session = {id: created.session_id, model: created.model};
  }

  // Feeds the session the words finished since the last feed (text up to the last whitespace).
  function feedSession() {
    // One feed at a time; the one in flight calls back here when done if the text moved on.
    if (!state.feeding) state.feeding = feedOnce().finally(() => { state.feeding = null; });
    return state.feeding;
  }

  async function feedOnce() {
    const seq = ++state.seq;
    const epoch = state.epoch;
    const text = ui.text.value;
    try {
      if (!state.session || !text.startsWith(state.fed)) await newSession();  // edited before the end
      const session = state.session;
      const pending = text.slice(state.fed.length);
      const finished = pending.slice(0, Math.max(pending.search(/\s\S*$/), -1) + 1);
      const unfinished = pending.slice(finished.length);
      const {text: head, prefix} = splitTyped(unfinished);
      if (!text.trim()) {
        clearPrediction();
        setStatus("");
        return;
      }
      if (!finished.trim() && head) {  // nothing to feed, and what follows is not a word in progress alone
        if (pending.trim() && !ui.bars.children.length) setStatus("session: a word is fed once you finish it (space)");
        return;
      }
      const started = performance.now();
      // The finished words are fed; the word in progress only ranks (with an empty text, nothing is written).
      const answer = await predict({text: finished.trim() ? finished : "", prefix: head ? "" : prefix,
                                    session_id: session.id, top_k: TOP_K});
      if (state.session !== session) return;  // the model or mode changed meanwhile: a new session follows
      state.fed += finished.trim() ? finished : "";  // the session has read it, whatever the page shows next
      state.scored.push(...answer.scores);
      if (seq === state.seq) {
        showBars(answer.predictions, answer.filter);
        showSurprise();
        setStatus(`session ${session.id.slice(0, 8)}… has read ${answer.session.tokens} tokens · ` +
                  `${Math.round(performance.now() - started)} ms for the last ${answer.tokens.length}`);
      }
    } catch (e) {
      if (e instanceof ApiError && e.code === "session_not_found") state.session = null;  // expired: start over
      if (seq === state.seq) showError(e);
    } finally {
      if ((ui.text.value !== text || epoch !== state.epoch) && !state.streaming) schedule(0);
    }
  }

  // Replaces the word in progress with the word taken (a keyboard's completion), and adds a space.
  function accept(word) {
    let text = ui.text.value;
    text = text.slice(0, text.length - splitTyped(text).prefix.length);
    if (ui.sessionMode.checked) text = text.replace(/\S+$/, "");  // the bars follow the last finished word
    if (word === "<eos>") text = text.replace(/[ \t]+$/, "") + "\n";
    else text += `${text && !/\s$/.test(text) ? " " : ""}${word} `;
    ui.text.value = text;
    ui.text.focus();
    schedule(0);
  }

  // --- generation --------------------------------------------------------------------------------

  async function generate() {
    if (state.streaming) return;
    clearTimeout(state.timer);
    const controller = (state.streaming = new AbortController());
    ui.generate.disabled = true;
    ui.stop.disabled = false;
    const sessionMode = ui.sessionMode.checked;
    let sid = null;
    let committed = false;
    try {
      if (state.feeding) await state.feeding;
      let prompt = ui.text.value;
      if (sessionMode) {
        if (!state.session || !prompt.startsWith(state.fed)) await newSession();
        sid = state.session.id;
        prompt = prompt.slice(state.fed.length);
      } else {
        sid = (await api("POST", "/sessions", {model: ui.model.value || null})).session_id;
      }
      const body = {max_tokens: Number(ui.maxTokens.value), temperature: Number(ui.temperature.value),
                    top_p: Number(ui.topP.value)};
      if (prompt.trim()) body.text = prompt;
      const response = await fetch(`/sessions/${sid}/generate`, {method: "POST", headers: headers(SSE),
                                                                  body: JSON.stringify(body), signal: controller.signal});
      if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
      const base = ui.text.value.replace(/\s*$/, (space) => space || (ui.text.value ? " " : ""));
      const tokens = [];
      let done = null;
      await readEvents(response, {
        token: (t) => {
          tokens.push(t);
          ui.text.value = base + tokens.map((x) => (x.word === "<eos>" ? "\n" : x.word)).join(" ");
          ui.text.scrollTop = ui.text.scrollHeight;
          setStatus(`streaming: ${tokens.length} tokens`);
        },
        done: (d) => { done = d; },
        error: (body) => { throw new ApiError(0, body); },
      });
      if (!done) throw new Error("the stream ended early");
      committed = true;
      const last = tokens[tokens.length - 1].word;
      const tail = done.finish_reason === "eos" ? "\n" : done.finish_reason === "stop" ? ` ${last} ` : " ";
      ui.text.value = base + done.text + (done.text || done.finish_reason !== "stop" ? tail : tail.trimStart());
      if (sessionMode) state.fed = ui.text.value;
      setStatus(`${done.tokens} tokens, finish: ${done.finish_reason}`);
    } catch (e) {
      if (e.name === "AbortError") setStatus("stopped");
      else showError(e);
    } finally {
      // A cut generation keeps nothing, unless it had just committed: the page cannot tell, so it starts over.
      if (sessionMode && !committed) state.session = null;
      if (!sessionMode && sid) api("DELETE", `/sessions/${sid}`).catch(() => {});
      state.streaming = null;
      ui.generate.disabled = false;
      ui.stop.disabled = true;
      ui.text.focus();
    }
    if (sessionMode && committed) await showAfterGeneration();
    else refresh();
  }

  // The bars and colours after a generation in session mode: the session has read everything, and a
  // prediction needs new text, so ask statelessly for the same context (the same distribution for a
  // session that started at a line start).
  async function showAfterGeneration() {
    const seq = ++state.seq;
    try {
      const answer = await predict({text: ui.text.value, model: ui.model.value || null, top_k: TOP_K});
      if (seq !== state.seq) return;
      state.scored = answer.scores;
      showBars(answer.predictions, answer.filter);
      showSurprise();
    } catch (e) {
      if (seq === state.seq) showError(e);
    }
  }

  // --- wiring --------------------------------------------------------------------------------------

  async function loadModels() {
    try {
      const {default: fallback, models} = await api("GET", "/models");
      const options = (chosen) => models.map((m) => new Option(`${m.name} (${m.architecture || "model"})`, m.name,
                                                                m.name === chosen, m.name === chosen));
      ui.model.replaceChildren(...options(fallback));
      const other = models.find((m) => m.name !== fallback);  // compared by default: another model
      ui.modelB.replaceChildren(...options(other ? other.name : fallback));
      if (ui.text.value.trim()) refresh();
    } catch (e) {
      showError(e);
    }
  }

  function resetModelOrMode() {
    state.seq++;  // answers in flight belong to the old model or mode
    state.epoch++;
    state.session = null;
    state.fed = "";
    clearPrediction();
    schedule(0);
  }

  // The article's example, LSTM against RNN where both are served.
  function preset() {
    const names = [...ui.model.options].map((o) => o.value);
    const pick = (kind) => names.find((n) => n.includes(kind));
    if (pick("lstm") && pick("rnn")) {
      ui.model.value = pick("lstm");
      ui.modelB.value = pick("rnn");
    }
    ui.compare.checked = true;
    showComparison();
    ui.text.value = CLIFF;
    resetModelOrMode();
    ui.text.focus();
  }

  function showComparison() {
    document.body.classList.toggle("comparing", ui.compare.checked);
    if (!ui.compare.checked) {
      state.seqB++;
      ui.barsB.replaceChildren();
      ui.surpriseB.replaceChildren();
    }
  }

  ui.text.addEventListener("input", () => schedule());
  ui.text.addEventListener("keydown", (event) => {  // Tab takes the first suggestion, as a keyboard's middle key does
    if (event.key !== "Tab" || event.shiftKey || event.altKey || event.ctrlKey || event.metaKey || !state.top) return;
    event.preventDefault();
    accept(state.top);
  });
  ui.compare.addEventListener("change", () => {
    showComparison();
    schedule(0);
  });
  ui.modelB.addEventListener("change", () => schedule(0));
  ui.preset.addEventListener("click", preset);
  ui.model.addEventListener("change", resetModelOrMode);
  ui.sessionMode.addEventListener("change", resetModelOrMode);
  ui.key.addEventListener("change", () => {
    sessionStorage.setItem("nextword-api-key", ui.key.value);
    loadModels();
  });
  ui.generate.addEventListener("click", generate);
  ui.stop.addEventListener("click", () => state.streaming && state.streaming.abort());
  for (const [input, output] of [[ui.temperature, $("temperature-value")], [ui.topP, $("top-p-value")]]) {
    input.addEventListener("input", () => { output.value = input.value; });
  }
  window.addEventListener("pagehide", () => {
    if (state.session) fetch(`/sessions/${state.session.id}`, {method: "DELETE", headers: headers(), keepalive: true});
  });
  ui.key.value = sessionStorage.getItem("nextword-api-key") || "";
  loadModels();
})();
