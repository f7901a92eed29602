"""Entry point of the streaming feature job: build the Flink SQL from the specs and submit it.

    python -m eightbox.features.stream.job [--restore PATH] [--local] [--print-sql]

prints one JSON line ``{"job_id": "..."}`` once the job is submitted to the session cluster at
``Settings.flink_rest_port`` (or ``flink_jobmanager``) and exits; the job keeps running there.
The Python process only plans and submits: every event is handled in the cluster's JVMs.
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import urlparse

from eightbox.deploy.flink_service import connector_jar, rest_url
from eightbox.settings import Settings, get_settings

from .sql import JOB_NAME, JobOptions, script, statements


def table_environment(settings: Settings, opts: JobOptions, restore: str | None = None, local: bool = False):
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    values = {
        "pipeline.name": JOB_NAME,
        "pipeline.jars": connector_jar(settings).as_uri(),
        "table.local-time-zone": "UTC",  # window ends on multiples of the slide from the epoch
        # sources set their own 'scan.watermark.idle-timeout' (events long, items short)
        "execution.checkpointing.interval": f"{int(opts.checkpoint_interval_s * 1000)} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.min-pause": "1000 ms",
        "execution.checkpointing.timeout": "120 s",
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
    }
    if not local:
        url = urlparse(rest_url(settings))
        values.update({"execution.target": "remote", "rest.address": url.hostname or "127.0.0.1",
                       "rest.port": str(url.port or 8081)})
    if restore:
        values["execution.state-recovery.path"] = restore
    for k, v in values.items():
        conf.set(k, v)
    return env


def submit(settings: Settings, opts: JobOptions | None = None, restore: str | None = None,
           local: bool = False, wait: bool = False) -> str:
    """Submit the job; returns its Flink job id (with `wait`, blocks until it ends)."""
    opts = opts or JobOptions(kafka_servers=settings.kafka_servers)
    env = table_environment(settings, opts, restore, local)
    ddl, inserts = statements(opts)
    for stmt in ddl:
        env.execute_sql(stmt)
    stmt_set = env.create_statement_set()
    for stmt in inserts:
        stmt_set.add_insert_sql(stmt)
    result = stmt_set.execute()
    job_id = str(result.get_job_client().get_job_id())
    if wait:
        result.wait()
    return job_id


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--restore", help="checkpoint or savepoint path to start from")
    p.add_argument("--local", action="store_true", help="run in an in-process mini-cluster and block")
    p.add_argument("--print-sql", action="store_true", help="print the generated SQL and exit")
    p.add_argument("--out-of-orderness-s", type=float, default=JobOptions.out_of_orderness_s)
    p.add_argument("--idle-timeout-s", type=float, default=JobOptions.idle_timeout_s)
    p.add_argument("--items-idle-timeout-s", type=float, default=JobOptions.items_idle_timeout_s)
    p.add_argument("--checkpoint-interval-s", type=float, default=JobOptions.checkpoint_interval_s)
    p.add_argument("--startup-mode", default=JobOptions.startup_mode)
    p.add_argument("--startup-timestamp-ms", type=int, default=None)
    p.add_argument("--group-id", default=JobOptions.group_id)
    p.add_argument("--transactional-id-prefix", default=JobOptions.transactional_id_prefix)
    p.add_argument("--at-least-once", action="store_true", help="no Kafka transactions in the sinks")
    a = p.parse_args(argv)
    settings = get_settings()
    opts = JobOptions(kafka_servers=settings.kafka_servers, out_of_orderness_s=a.out_of_orderness_s,
                      idle_timeout_s=a.idle_timeout_s, items_idle_timeout_s=a.items_idle_timeout_s,
                      checkpoint_interval_s=a.checkpoint_interval_s,
                      startup_mode=a.startup_mode, startup_timestamp_ms=a.startup_timestamp_ms,
                      group_id=a.group_id, transactional_id_prefix=a.transactional_id_prefix,
                      exactly_once=not a.at_least_once)
    if a.print_sql:
        print(script(opts))
        return
    job_id = submit(settings, opts, restore=a.restore, local=a.local, wait=a.local)
    print(json.dumps({"job_id": job_id}), flush=True)


if __name__ == "__main__":
    main()
