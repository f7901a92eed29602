"""The one typed settings object every Eightbox process reads.

Values come from the environment (prefix ``EIGHTBOX_``) or a ``.env`` file. The embedded stack
and a Compose or cluster deployment differ only in these values. Building a ``Settings`` neither
connects to anything nor creates a directory: paths are derived, and created by whoever writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
_DEV_PII_KEY = "eightbox-development-only-key"
_DEV_ADMIN_TOKEN = "eightbox-development-admin-token"
_DEV_USER_TOKEN = "eightbox-development-user-token"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EIGHTBOX_", env_file=".env", extra="ignore", frozen=True
    )

    env: Literal["development", "test", "production"] = "development"
    """Deployment environment; `production` refuses development-only defaults such as the PII key."""

    home: Path = REPO_ROOT / ".eightbox"
    """Root of everything the embedded stack writes: service data, run state, the lake."""

    jars_dir: Path = REPO_ROOT / ".eightbox" / "jars"
    """JVM jars fetched by `make setup` (Kafka, its tools, the Flink Kafka connector)."""

    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap: str | None = None
    """Brokers clients connect to; unset means the embedded broker on 127.0.0.1:`kafka_port`."""

    kafka_port: int = 19092
    """Client port of the embedded Kafka broker."""

    kafka_controller_port: int = 19093
    """KRaft controller port of the embedded Kafka broker."""

    kafka_heap: str = "512m"
    """JVM heap (-Xmx and -Xms) of the embedded Kafka broker."""

    # --- Redis -------------------------------------------------------------------------------
    redis_url: str | None = None
    """Redis URL for the online store; unset means the embedded server on `redis_port`."""

    redis_port: int = 16379
    """Port of the embedded Redis server."""

    redis_maxmemory: str = "1gb"
    """Memory cap of the embedded Redis server."""

    # --- MLflow ------------------------------------------------------------------------------
    mlflow_tracking_uri: str | None = None
    """MLflow tracking and registry server; unset means the embedded server on `mlflow_port`."""

    mlflow_port: int = 15000
    """Port of the embedded MLflow server."""

    # --- Ingest ------------------------------------------------------------------------------
    pii_key: SecretStr = SecretStr(_DEV_PII_KEY)
    """Key of the keyed hash (HMAC-SHA256) that pseudonymizes personal data at ingestion."""

    max_event_bytes: int = 64 * 1024
    """Largest accepted event payload; larger ones go to the dead-letter topic."""

    archiver_group: str = "lake-archiver"
    """Consumer group shared by the lake archiver processes."""

    archiver_flush_records: int = 5000
    """The archiver writes a partition's buffer once it holds this many events..."""

    archiver_flush_seconds: float = 2.0
    """...or once its oldest event has waited this long."""

    archiver_rejoin_after_s: float = 30.0
    """An archiver that has owned no partition this long replaces its consumer: kafka-python 3.0.12 can
    stay stuck looking up the group coordinator, while a fresh client joins at once."""

    # --- Feature pipeline ----------------------------------------------------------------------
    spark_master: str = "local[2]"
    """Spark master for backfills: `local[N]` in the embedded stack, `spark://host:7077` on a cluster."""

    spark_driver_memory: str = "2g"
    """Driver memory of the Spark backfill."""

    flink_rest_port: int = 18081
    """REST (and web UI) port of the embedded Flink JobManager; jobs are submitted through it."""

    flink_rpc_port: int = 16123
    """RPC port of the embedded Flink JobManager."""

    flink_jobmanager: str | None = None
    """`host:port` of a Flink cluster's REST endpoint; unset means the embedded one."""

    flink_taskmanager_memory: str = "1536m"
    """Total process memory of the embedded Flink TaskManager."""

    pusher_group: str = "feature-pusher"
    """Consumer group of the process that pushes streaming feature values into Feast."""

    feast_project: str = "eightbox"
    """Feast project name; the registry lives under `home`/feast."""

    # --- Serving -----------------------------------------------------------------------------
    serving_max_k: int = Field(100, ge=1, le=1000)
    """Largest `k` a /recommend request may ask for; larger is refused with 422."""

    serving_max_body_bytes: int = Field(64 * 1024, ge=1024)
    """Largest request body the API reads; larger (by Content-Length or as streamed) gets 413."""

    serving_max_events_per_request: int = Field(100, ge=1)
    """Most events one POST /events may carry."""

    serving_max_in_flight: int = Field(64, ge=1)
    """Requests /recommend (and, separately, /events) works on at once; the excess gets 429 at once."""

    serving_retry_after_s: int = Field(1, ge=0)
    """Retry-After (seconds) sent with 429 and 503."""

    serving_request_timeout_s: float = Field(1.0, gt=0)
    """Last-resort deadline of one /recommend; past it the static rung answers (the funnel's own
    stage budgets are far tighter)."""

    serving_event_ack_timeout_s: float = Field(5.0, gt=0)
    """How long POST /events waits for the broker's acknowledgements before answering 503."""

    serving_impression_sample_share: float = Field(1.0, ge=0.0, le=1.0)
    """Share of served requests whose impressions (with their features) are logged; chosen by a
    hash of the request id, so a request is logged whole or not at all."""

    serving_impression_queue: int = Field(10_000, ge=1)
    """Served requests waiting to be logged; beyond it new ones are dropped and counted."""

    serving_admin_tokens: SecretStr | None = None
    """Comma-separated bearer tokens allowed to call /admin/* (reload, promote, rollback); unset
    means a development-only token outside production, and no admin access at all in production."""

    serving_user_tokens: SecretStr | None = None
    """Comma-separated bearer tokens of API clients: known, but refused /admin/* with 403; unset means
    a development-only token outside production."""

    serving_host: str = "127.0.0.1"
    """Address the serving API (`python -m eightbox.serving`) listens on."""

    serving_port: int = 18000
    """Port of the serving API."""

    serving_model_name: str = "eightbox-recommender"
    """Registered model whose `champion` alias the serving process loads and follows."""

    serving_reload_interval_s: float = Field(30.0, gt=0)
    """How often the serving process polls the registry's champion alias; when it has moved, the new
    bundle is loaded off the event loop and swapped in (POST /admin/reload checks at once)."""

    serving_budget_scale: float = Field(1.0, gt=0)
    """Multiplies every funnel stage budget and timeout and the whole-request timeout: 1 is the
    production budget (100 ms); tests on a shared machine and slow demos raise it."""

    serving_trust_request_time: bool = False
    """Honour /recommend's `context.request_time`: impressions and shadow events are stamped with the
    client's time, not the server's. Off by default in every environment (a client could back-date
    its impressions); turn it on for simulated-time runs only (the closed-loop demo, tests). When
    off, a request that carries it is refused with 422 rather than silently stamped with another time."""

    serving_shadow_max_in_flight: int = Field(4, ge=1)
    """Shadow-scoring runs (the challenger scored beside the champion, never shown) at once; beyond
    it a request's shadow run is dropped and counted, so shadow work never queues behind traffic."""

    # --- Monitoring --------------------------------------------------------------------------
    monitoring_thresholds: str = "{}"
    """Overrides of monitoring thresholds, JSON {name: [watch, act]}, e.g. ``{"psi": [0.1, 0.25]}``
    (text, so a child process gets it back verbatim); names and defaults in monitoring/thresholds.py."""

    monitoring_interval_s: float = Field(3600.0, gt=0)
    """How often the monitoring service (`python -m eightbox.monitoring`) runs the checks."""

    monitoring_window_s: float = Field(86_400.0, gt=0)
    """Length of the window each scheduled run checks, ending at the run's time."""

    monitoring_attribution_window_s: float = Field(3600.0, gt=0)
    """A click or engagement later than this after an impression is not its label (as in training)."""

    monitoring_label_delay_s: float = Field(7200.0, gt=0)
    """Impressions younger than this at the window end have no final label yet: CTR, engagement and
    ECE leave them out. At least the attribution window."""

    monitoring_returning_lookback_days: float = Field(30.0, gt=0)
    """A user who clicked or engaged within this many days before a window is "returning", else "new"."""

    monitoring_metrics_url: str | None = None
    """The serving /metrics the system layer scrapes; unset means `serving_host`:`serving_port`."""

    @property
    def monitoring_threshold_overrides(self) -> dict[str, tuple[float, float]]:
        """`monitoring_thresholds` parsed: {name: (watch, act)}."""
        import json

        return {k: (float(v[0]), float(v[1])) for k, v in json.loads(self.monitoring_thresholds).items()}

    @model_validator(mode="after")
    def _monitoring_thresholds_valid(self) -> "Settings":
        from eightbox.monitoring.thresholds import thresholds

        try:
            thresholds(self.monitoring_threshold_overrides)
        except (ValueError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"EIGHTBOX_MONITORING_THRESHOLDS must be JSON {{name: [watch, act]}}: {e}") from None
        return self

    @model_validator(mode="after")
    def _monitoring_labels_mature(self) -> "Settings":
        if self.monitoring_label_delay_s < self.monitoring_attribution_window_s:
            raise ValueError("EIGHTBOX_MONITORING_LABEL_DELAY_S must be at least the attribution window: "
                             "an impression is labelled only once its attribution window has closed")
        return self

    # --- The loop's controller (training/controller.py) --------------------------------------
    controller_interval_s: float = Field(60.0, gt=0)
    """How often the controller (`python -m eightbox.training.controller`) wakes: it steps the
    promotion ladder, and runs the nightly batch and retrains when they are due."""

    controller_nightly_hour: int = Field(2, ge=0, le=23)
    """Hour (UTC) from which the nightly batch runs for the days before today: the Spark backfill
    of the daily feature tables, then Feast materialization into Redis."""

    controller_retrain_every_h: float = Field(24.0, ge=0)
    """A retrain this many hours after the last one; 0 retrains on concept-drift alerts only (the
    monitoring service's `concept_drift` at `act`, which retrains at once whatever the schedule)."""

    controller_train_window_days: float = Field(7.0, ge=0)
    """A retrain learns from this many recent days of the lake; 0 means all of it."""

    controller_ladder: str = "{}"
    """Overrides of the promotion ladder, JSON {field: value} of `training.promotion.LadderConfig`,
    e.g. ``{"canary_hours": 24, "canary_share": 0.1}``."""

    @property
    def controller_ladder_config(self):
        """`controller_ladder` as a `LadderConfig`."""
        import json

        from eightbox.training.promotion import LadderConfig

        return LadderConfig(**json.loads(self.controller_ladder))

    @model_validator(mode="after")
    def _controller_ladder_valid(self) -> "Settings":
        try:
            self.controller_ladder_config
        except (ValueError, TypeError) as e:
            raise ValueError(f"EIGHTBOX_CONTROLLER_LADDER must be JSON {{field: value}} of LadderConfig: {e}") from None
        return self

    # --- Startup -----------------------------------------------------------------------------
    start_timeout_s: float = 90.0
    """How long `eightbox up` waits for a service to become healthy."""

    @model_validator(mode="after")
    def _no_dev_secrets_in_production(self) -> "Settings":
        if self.env == "production" and self.pii_key.get_secret_value() == _DEV_PII_KEY:
            raise ValueError("EIGHTBOX_PII_KEY must be set to a real secret when EIGHTBOX_ENV=production")
        return self

    @model_validator(mode="after")
    def _no_dev_tokens_in_production(self) -> "Settings":
        if self.env == "production":
            for name, placeholder in (("serving_admin_tokens", _DEV_ADMIN_TOKEN),
                                      ("serving_user_tokens", _DEV_USER_TOKEN)):
                value = getattr(self, name)
                if value is not None and placeholder in _tokens(value):
                    raise ValueError(f"EIGHTBOX_{name.upper()} must not hold the development token "
                                     "when EIGHTBOX_ENV=production")
        return self

    # Derived locations and addresses: computed, never created here.
    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def lake_dir(self) -> Path:
        return self.home / "lake"

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment from which a child process rebuilds these same Settings: `base` (default:
        this process's environment) without its EIGHTBOX_* variables, plus every set field."""
        import os

        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("EIGHTBOX_")}
        for name, value in self.model_dump().items():
            if value is not None:
                value = value.get_secret_value() if isinstance(value, SecretStr) else value
                env[f"EIGHTBOX_{name.upper()}"] = str(value)
        return env

    @property
    def features_dir(self) -> Path:
        """Feature history tables (Feast's offline store): `<lake>/features/<table>/dt=.../`."""
        return self.lake_dir / "features"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def admin_tokens(self) -> frozenset[str]:
        """The admin bearer tokens (from `serving_admin_tokens`), blanks dropped."""
        return self._serving_tokens(self.serving_admin_tokens, _DEV_ADMIN_TOKEN)

    @property
    def user_tokens(self) -> frozenset[str]:
        """The client bearer tokens (from `serving_user_tokens`), blanks dropped."""
        return self._serving_tokens(self.serving_user_tokens, _DEV_USER_TOKEN)

    def _serving_tokens(self, value: SecretStr | None, placeholder: str) -> frozenset[str]:
        if value is None:  # production fails closed: no token configured, nobody gets in
            return frozenset() if self.env == "production" else frozenset({placeholder})
        return _tokens(value)

    @property
    def kafka_servers(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_address(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://127.0.0.1:{self.mlflow_port}"


def _tokens(secret: SecretStr) -> frozenset[str]:
    return frozenset(t.strip() for t in secret.get_secret_value().split(",") if t.strip())


def get_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit overrides (tests, CLI flags) on top."""
    return Settings(**overrides)
