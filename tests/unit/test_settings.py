"""The typed settings object (eightbox/settings.py): environment, derived addresses, safety checks."""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from eightbox import settings as settings_module
from eightbox.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No EIGHTBOX_ variable or .env file of the developer's leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("EIGHTBOX_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_describe_a_local_development_stack():
    s = Settings()
    assert s.env == "development"
    assert (s.kafka_servers, s.redis_address, s.mlflow_uri) == (
        "127.0.0.1:19092", "redis://127.0.0.1:16379/0", "http://127.0.0.1:15000")


def test_eightbox_prefixed_environment_variables_override_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("EIGHTBOX_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("EIGHTBOX_KAFKA_PORT", "29092")
    monkeypatch.setenv("EIGHTBOX_ARCHIVER_FLUSH_SECONDS", "0.5")
    monkeypatch.setenv("EIGHTBOX_MAX_EVENT_BYTES", "1024")
    monkeypatch.setenv("EIGHTBOX_ENV", "test")
    s = Settings()
    assert s.home == tmp_path / "elsewhere" and isinstance(s.home, Path)
    assert (s.kafka_port, s.archiver_flush_seconds, s.max_event_bytes, s.env) == (29092, 0.5, 1024, "test")


def test_variable_names_are_case_insensitive_and_need_the_prefix(monkeypatch):
    monkeypatch.setenv("eightbox_redis_port", "6380")
    monkeypatch.setenv("KAFKA_PORT", "1")  # no prefix: not ours
    s = Settings()
    assert s.redis_port == 6380 and s.kafka_port == 19092


def test_explicit_arguments_override_the_environment(monkeypatch):
    monkeypatch.setenv("EIGHTBOX_REDIS_PORT", "6380")
    assert get_settings(redis_port=7000).redis_port == 7000


def test_a_badly_typed_environment_value_is_rejected(monkeypatch):
    monkeypatch.setenv("EIGHTBOX_KAFKA_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="kafka_port"):
        Settings()


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path):
    (tmp_path / ".env").write_text("EIGHTBOX_MLFLOW_PORT=5555\n")
    assert Settings().mlflow_port == 5555


def test_derived_addresses_follow_the_ports():
    s = Settings(kafka_port=1, redis_port=2, mlflow_port=3)
    assert (s.kafka_servers, s.redis_address, s.mlflow_uri) == (
        "127.0.0.1:1", "redis://127.0.0.1:2/0", "http://127.0.0.1:3")


def test_an_explicit_url_wins_over_the_port(monkeypatch):
    monkeypatch.setenv("EIGHTBOX_KAFKA_BOOTSTRAP", "kafka-0:9092,kafka-1:9092")
    monkeypatch.setenv("EIGHTBOX_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("EIGHTBOX_MLFLOW_TRACKING_URI", "https://mlflow.internal")
    s = Settings(kafka_port=1, redis_port=2, mlflow_port=3)
    assert (s.kafka_servers, s.redis_address, s.mlflow_uri) == (
        "kafka-0:9092,kafka-1:9092", "redis://cache:6379/2", "https://mlflow.internal")


def test_derived_directories_live_under_home(tmp_path):
    s = Settings(home=tmp_path / "h")
    assert (s.data_dir, s.run_dir, s.lake_dir) == (tmp_path / "h/data", tmp_path / "h/run", tmp_path / "h/lake")


def test_constructing_settings_creates_no_directory(tmp_path):
    home = tmp_path / "does" / "not" / "exist"
    before = sorted(tmp_path.rglob("*"))
    s = Settings(home=home, jars_dir=home / "jars")
    _ = (s.data_dir, s.run_dir, s.lake_dir, s.kafka_servers, s.redis_address, s.mlflow_uri)
    assert not home.exists() and sorted(tmp_path.rglob("*")) == before


def test_settings_are_immutable():
    s = Settings()
    with pytest.raises(ValidationError):
        s.kafka_port = 1  # type: ignore[misc]


def test_production_refuses_the_development_pii_key(monkeypatch):
    monkeypatch.setenv("EIGHTBOX_ENV", "production")
    with pytest.raises(ValidationError, match="EIGHTBOX_PII_KEY"):
        Settings()


def test_production_accepts_a_real_pii_key(monkeypatch):
    monkeypatch.setenv("EIGHTBOX_ENV", "production")
    monkeypatch.setenv("EIGHTBOX_PII_KEY", "a-real-secret-from-the-vault")
    s = Settings()
    assert s.env == "production" and s.pii_key.get_secret_value() == "a-real-secret-from-the-vault"


@pytest.mark.parametrize("env", ["development", "test"])
def test_other_environments_accept_the_development_pii_key(env):
    assert Settings(env=env).pii_key.get_secret_value()


def test_the_pii_key_is_not_shown_in_the_settings_repr(monkeypatch):
    monkeypatch.setenv("EIGHTBOX_PII_KEY", "top-secret-value")
    s = Settings()
    assert "top-secret-value" not in repr(s) and "top-secret-value" not in str(s.model_dump())


def test_an_unknown_environment_name_is_rejected():
    with pytest.raises(ValidationError, match="env"):
        Settings(env="staging")


def _settings_class_body() -> list[ast.stmt]:
    tree = ast.parse(inspect.getsource(settings_module))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    return cls.body


def test_every_settings_field_has_a_docstring():
    body = _settings_class_body()
    documented, undocumented = set(), []
    for stmt, following in zip(body, body[1:] + [None]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            doc = following.value.value if (
                isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)) else None
            if isinstance(doc, str) and doc.strip():
                documented.add(stmt.target.id)
            else:
                undocumented.append(stmt.target.id)
    assert undocumented == []
    assert documented == set(Settings.model_fields)  # the parse saw every field, and only fields


def test_child_env_rebuilds_the_same_settings_in_another_process(tmp_path):
    from eightbox.settings import Settings

    original = Settings(home=tmp_path / "h", kafka_port=31000, pii_key="k", archiver_group="g")
    env = original.child_env({"PATH": "/bin", "EIGHTBOX_REDIS_PORT": "1"})
    assert env["PATH"] == "/bin" and env["EIGHTBOX_PII_KEY"] == "k"
    rebuilt = Settings(**{k.removeprefix("EIGHTBOX_").lower(): v for k, v in env.items() if k.startswith("EIGHTBOX_")})
    assert rebuilt == original, "a stale EIGHTBOX_ variable of the parent must not leak through"
