"""service/budget.py: what a request costs, counted before any work, and each endpoint refusing a request past a
limit with a 400 that names the field and the limit's variable, having run no model step."""

from __future__ import annotations

import pytest

from service.budget import Budget, Cost
from service.bundle import discover
from service.errors import Input, InvalidInput


@pytest.fixture(scope="module")
def budget(models_dir) -> Budget:
    bundles = {b.name: b for b in discover(models_dir)}
    return Budget(bundles, "tiny-lstm", max_tokens=100, max_predictions=50, max_answer_bytes=64 * 1024)


def test_an_item_costs_its_tokens_its_top_k_and_an_answer_that_bounds_the_real_one(budget, client):
    cost = budget.item("the cat eats fish .", None, 5, session=False)
    assert (cost.tokens, cost.predictions) == (5, 5)
    scored = budget.item("the cat eats fish .", None, 5, session=False, scores=True)
    assert (scored.tokens, scored.predictions) == (6, 10)  # one step more, and a score per token
    for body, bound in (({"text": "the cat eats fish .", "top_k": 5}, cost),
                        ({"text": "the cat eats fish .", "top_k": 5, "scores": True}, scored),
                        ({"text": "a-b \"c\" " * 20, "top_k": 40}, budget.item("a-b \"c\" " * 20, None, 40, False))):
        answer = client.post("/predict", json=body)
        assert answer.status_code == 200 and len(answer.get_data()) <= bound.answer_bytes


def test_a_generation_costs_its_prompt_its_tokens_and_the_logprobs_replay(budget):
    plain = budget.generation("the cat", None, 10, session=True)
    assert (plain.tokens, plain.predictions) == (2 + 10, 10)
    with_logprobs = budget.generation("the cat", "tiny-lstm", 10, session=False, logprobs=3)
    assert (with_logprobs.tokens, with_logprobs.predictions) == (2 + 10 + 10, 10 + 30)
    assert budget.generation(None, None, 10, session=True).tokens == 11  # no prompt: at most one step to start


@pytest.mark.parametrize("cost, quantity, variable", [
    (Cost(101, 0, 0), Input.TOKENS, "NEXTWORD_MAX_REQUEST_TOKENS"),
    (Cost(0, 51, 0), Input.PREDICTIONS, "NEXTWORD_MAX_REQUEST_PREDICTIONS"),
    (Cost(0, 0, 64 * 1024 + 1), Input.ANSWER, "NEXTWORD_MAX_RESPONSE_BYTES"),
])
def test_each_limit_names_its_quantity_and_variable_and_the_limit_itself_passes(budget, cost, quantity, variable):
    budget.check(Cost(100, 50, 64 * 1024))
    with pytest.raises(InvalidInput) as e:
        budget.check(cost)
    assert e.value.input is quantity and variable in e.value.message


# -- the endpoints -------------------------------------------------------------------------------------------------

@pytest.fixture
def tight(make_app):
    """An app with small budgets; every onnxruntime call is counted."""
    app = make_app(max_request_tokens=20, max_request_predictions=30, max_response_bytes=64 * 1024)
    calls = []
    for scheduler in app.extensions["nextword"].engine.models.values():
        run = scheduler.runtime.run
        scheduler.runtime.run = lambda *a, _run=run, **k: calls.append(1) or _run(*a, **k)
    return app.test_client(), calls


ITEM = {"text": "the cat eats fish ."}  # five tokens


@pytest.mark.parametrize("path, body, field, variable", [
    ("/predict/batch", {"items": [{**ITEM, "top_k": 1}] * 5}, "items", "NEXTWORD_MAX_REQUEST_TOKENS"),
    ("/predict/batch", {"items": [{"text": "the", "top_k": 8}] * 4}, "items", "NEXTWORD_MAX_REQUEST_PREDICTIONS"),
    ("/predict", {"text": "the", "top_k": 31}, "top_k", "NEXTWORD_MAX_REQUEST_PREDICTIONS"),
    ("/predict", {**ITEM, "top_k": 26, "scores": True}, "top_k", "NEXTWORD_MAX_REQUEST_PREDICTIONS"),
    ("/predict", {"text": "the " * 21}, "text", "NEXTWORD_MAX_REQUEST_TOKENS"),
    ("/v1/completions", {"prompt": "the", "max_tokens": 20}, "max_tokens", "NEXTWORD_MAX_REQUEST_TOKENS"),
    ("/v1/completions", {"prompt": "the", "max_tokens": 8, "logprobs": 3}, "logprobs",
     "NEXTWORD_MAX_REQUEST_PREDICTIONS"),
])
def test_a_request_past_its_budget_is_a_400_before_any_model_step(tight, path, body, field, variable):
    client, calls = tight
    response = client.post(path, json=body)
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert (error["code"], error.get("field", error.get("param"))) == ("invalid_input", field)
    assert variable in error["message"]
    assert calls == []


def test_a_generation_past_its_budget_is_a_400_and_the_session_is_untouched(tight):
    client, calls = tight
    sid = client.post("/sessions").json["session_id"]
    response = client.post(f"/sessions/{sid}/generate", json={"text": "the cat", "max_tokens": 19})
    assert response.status_code == 400 and response.json["error"]["field"] == "max_tokens"
    assert "NEXTWORD_MAX_REQUEST_TOKENS" in response.json["error"]["message"]
    assert calls == [] and client.get(f"/sessions/{sid}").json["version"] == 0
    assert client.post(f"/sessions/{sid}/generate", json={"text": "the cat", "max_tokens": 18}).status_code == 200


def test_the_answer_bytes_bound_refuses_a_large_top_k_and_the_full_vector_of_a_small_limit(make_app):
    client = make_app(max_response_bytes=64 * 1024).test_client()
    response = client.post("/predict", json={"text": "the", "top_k": 1000})
    assert response.status_code == 400 and response.json["error"]["field"] == "top_k"
    assert "NEXTWORD_MAX_RESPONSE_BYTES" in response.json["error"]["message"]
    assert client.post("/predict", json={"text": "the", "top_k": 100}).status_code == 200
    vector = client.post("/predict", json={"text": "the"}, headers={"Accept": "application/octet-stream"})
    assert vector.status_code == 200  # a tiny vocabulary's vector is far below the limit
