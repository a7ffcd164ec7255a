"""service.config: every setting from the environment, and clear errors naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config import ConfigError, Settings, settings_help, settings_table, variables, with_table

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_from_an_empty_environment():
    s = Settings.from_env({})
    assert s == Settings()
    assert s.bind == "127.0.0.1:8000" and s.device == "auto" and s.redis_url == "" and s.api_keys == ()


def test_every_variable_is_read(tmp_path):
    env = {"NEXTWORD_BIND": "0.0.0.0:9000", "NEXTWORD_MODELS_DIR": str(tmp_path), "NEXTWORD_DEFAULT_MODEL": "m",
           "NEXTWORD_DEVICE": "CPU", "REDIS_URL": "redis://h:6379/1", "NEXTWORD_REDIS_DIR": "/r",
           "NEXTWORD_WORKERS": "3", "NEXTWORD_CONNECTIONS": "40", "NEXTWORD_ORT_THREADS": "2",
           "NEXTWORD_SESSION_TTL_SECONDS": "7", "NEXTWORD_MAX_TEXT_TOKENS": "9", "NEXTWORD_MAX_BODY_BYTES": "1000",
           "NEXTWORD_MAX_TOP_K": "11", "NEXTWORD_MAX_GENERATE_TOKENS": "12", "NEXTWORD_MAX_STREAMS": "13",
           "NEXTWORD_BATCH_MAX_SIZE": "14", "NEXTWORD_MAX_BATCH_ITEMS": "15", "NEXTWORD_BATCH_WAIT_MS": "0.5",
           "NEXTWORD_CAS_RETRIES": "0", "NEXTWORD_MAX_REQUEST_TOKENS": "16", "NEXTWORD_MAX_REQUEST_PREDICTIONS": "17",
           "NEXTWORD_MAX_RESPONSE_BYTES": "70000",
           "NEXTWORD_API_KEYS": " a, b ,", "NEXTWORD_LOG_LEVEL": "DEBUG", "NEXTWORD_LOG_TEXT": "yes",
           "NEXTWORD_GRACEFUL_TIMEOUT": "4", "PROMETHEUS_MULTIPROC_DIR": "/p", "NEXTWORD_API_KEYS_FILE": "",
           "NEXTWORD_CORS_ORIGINS": "*", "NEXTWORD_REQUEST_READ_TIMEOUT_S": "2.5", "NEXTWORD_REDIS_MAXMEMORY": "1gb",
           "NEXTWORD_SEND_TIMEOUT_S": "7.5"}
    assert set(env) == set(variables().values())
    s = Settings.from_env(env)
    assert (s.bind, s.models_dir, s.default_model, s.device, s.redis_url, s.redis_dir) == (
        "0.0.0.0:9000", tmp_path, "m", "cpu", "redis://h:6379/1", Path("/r"))
    assert (s.workers, s.connections, s.ort_threads, s.session_ttl_seconds, s.max_text_tokens, s.max_body_bytes,
            s.max_top_k, s.max_generate_tokens, s.max_streams, s.batch_max_size, s.cas_retries,
            s.graceful_timeout) == (3, 40, 2, 7, 9, 1000, 11, 12, 13, 14, 0, 4)
    assert s.max_batch_items == 15 and s.batch_wait_ms == 0.5 and s.api_keys == ("a", "b") and s.log_level == "debug" and s.log_text
    assert s.prometheus_dir == Path("/p") and s.cors_origins == ("*",) and s.request_read_timeout_s == 2.5
    assert s.redis_maxmemory == "1gb" and s.api_keys_file is None and s.send_timeout_s == 7.5
    assert (s.max_request_tokens, s.max_request_predictions, s.max_response_bytes) == (16, 17, 70000)


@pytest.mark.parametrize("name, value", [
    ("NEXTWORD_WORKERS", "two"), ("NEXTWORD_WORKERS", "0"), ("NEXTWORD_CONNECTIONS", "-1"),
    ("NEXTWORD_MAX_BATCH_ITEMS", "many"), ("NEXTWORD_MAX_BATCH_ITEMS", "0"), ("NEXTWORD_BATCH_WAIT_MS", "soon"),
    ("NEXTWORD_BATCH_WAIT_MS", "5000"), ("NEXTWORD_BATCH_WAIT_MS", "nan"), ("NEXTWORD_DEVICE", "tpu"),
    ("NEXTWORD_LOG_LEVEL", "loud"), ("NEXTWORD_LOG_TEXT", "maybe"), ("NEXTWORD_MAX_BODY_BYTES", "1"),
    ("NEXTWORD_REDIS_MAXMEMORY", "lots"), ("NEXTWORD_SESSION_TTL_SECONDS", "3.5"),
])
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(ConfigError, match=f"^{name}"):
        Settings.from_env({name: value})


@pytest.mark.parametrize("name, value, message", [  # one of each kind, in the words operators know
    ("NEXTWORD_WORKERS", "0", "NEXTWORD_WORKERS=0 must be between 1 and 64"),
    ("NEXTWORD_BATCH_WAIT_MS", "soon", "NEXTWORD_BATCH_WAIT_MS='soon' is not a number"),
    ("NEXTWORD_DEVICE", "TPU", "NEXTWORD_DEVICE='tpu' must be auto, cpu or cuda"),
    ("NEXTWORD_LOG_TEXT", "maybe", "NEXTWORD_LOG_TEXT='maybe' must be true or false"),
    ("NEXTWORD_REDIS_MAXMEMORY", "lots", "NEXTWORD_REDIS_MAXMEMORY='lots' must be a size such as 256mb or 2gb"),
])
def test_error_wording(name, value, message):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value) == message


def test_values_are_stripped_and_a_blank_one_means_the_default():
    s = Settings.from_env({"NEXTWORD_WORKERS": "  ", "NEXTWORD_BIND": " 0.0.0.0:9000 ", "NEXTWORD_LOG_TEXT": " on ",
                           "NEXTWORD_REDIS_MAXMEMORY": " 2GB", "NEXTWORD_API_KEYS_FILE": " ", "REDIS_URL": ""})
    assert (s.workers, s.bind, s.log_text, s.redis_maxmemory, s.api_keys, s.redis_url) == (
        2, "0.0.0.0:9000", True, "2gb", (), "")


def test_variable_names_are_exact_and_only_from_env_reads_them(monkeypatch):
    assert Settings.from_env({"nextword_workers": "5", "WORKERS": "5"}).workers == 2
    monkeypatch.setenv("NEXTWORD_WORKERS", "5")
    assert Settings.from_env().workers == 5
    assert Settings().workers == 2  # a Settings built in code holds its arguments only


def test_api_keys_file_adds_keys_and_skips_comments(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# ops team\nk1\n\n  k2  \n")
    assert Settings.from_env({"NEXTWORD_API_KEYS": "k0", "NEXTWORD_API_KEYS_FILE": str(keys)}).api_keys == (
        "k0", "k1", "k2")
    with pytest.raises(ConfigError, match="NEXTWORD_API_KEYS_FILE"):
        Settings.from_env({"NEXTWORD_API_KEYS_FILE": str(tmp_path / "missing")})


def test_describe_hides_keys_and_redis_passwords():
    s = Settings.from_env({"NEXTWORD_API_KEYS": "secret-key", "REDIS_URL": "redis://user:hunter2@redis:6379/0"})
    text = repr(s.describe()) + repr(s)
    assert "secret-key" not in text and "hunter2" not in text
    assert s.describe()["api_keys"] == "1 configured"
    assert s.describe()["redis_url"] == "redis://user:***@redis:6379/0"


def test_streams_cannot_take_the_connections_other_requests_need():
    with pytest.raises(ConfigError, match="NEXTWORD_MAX_STREAMS=3585.*512 of NEXTWORD_CONNECTIONS=4096"):
        Settings.from_env({"NEXTWORD_CONNECTIONS": "4096", "NEXTWORD_MAX_STREAMS": "3585"})
    with pytest.raises(ConfigError, match="NEXTWORD_MAX_STREAMS=9 .* 8 of NEXTWORD_CONNECTIONS=16"):
        Settings(connections=16, max_streams=9)
    assert Settings.from_env({"NEXTWORD_CONNECTIONS": "4096", "NEXTWORD_MAX_STREAMS": "3584"}).max_streams == 3584


def test_help_names_every_variable_with_its_default_and_meaning():
    text = settings_help()
    assert set(variables().values()) <= set(re.findall(r"^  (\w+) \(default: ", text, re.M))
    assert "  NEXTWORD_WORKERS (default: 2)\n      gunicorn processes; each loads every bundle once" in text
    assert "  NEXTWORD_API_KEYS_FILE (default: empty)\n" in text
    assert "(docs/operations.md#reloading-models)" in text  # a Markdown link as its page


def test_every_setting_is_described_on_its_field():
    for name, field in Settings.model_fields.items():
        assert field.description and "|" not in field.description, name  # one table cell each


def test_the_configuration_page_holds_the_generated_table():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == with_table(page), "run `python -m service.config --write docs/configuration.md`"
    table = settings_table()
    assert f"| `NEXTWORD_WORKERS` | `2` | {Settings.model_fields['workers'].description} |" in table
    assert "| `REDIS_URL` | empty | " in table and table in page
    for variable in variables().values():
        assert f"| `{variable}` |" in table
