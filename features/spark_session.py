"""The one way Eightbox builds a SparkSession: local mode in the embedded stack, a cluster by
changing `settings.spark_master` (e.g. ``spark://host:7077``) and nothing else.

Contract of the session returned:
- session time zone UTC (timestamps are read, computed and written as UTC instants);
- ``spark.sql.sources.partitionOverwriteMode=dynamic``: an overwrite replaces only the partitions
  present in the written DataFrame;
- Parquet timestamps written as INT64 microseconds (what pyarrow, Feast and the lake use), and no
  ``_SUCCESS`` marker files;
- few shuffle partitions (sized for 2 local cores), UI off, logs at WARN-or-quieter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from eightbox.settings import Settings

SHUFFLE_PARTITIONS = 4
LOG_LEVEL = "ERROR"
LOG_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "spark-log4j2.properties"


def _conf(settings: Settings) -> dict[str, str]:
    return {
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": f"-Duser.timezone=UTC -Dlog4j2.configurationFile={LOG_CONFIG}",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.shuffle.partitions": str(SHUFFLE_PARTITIONS),
        "spark.default.parallelism": str(SHUFFLE_PARTITIONS),
        "spark.sql.adaptive.enabled": "true",
        # backfills pass explicit lake files; listing them on the driver beats a listing job
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "4096",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.hadoop.parquet.enable.summary-metadata": "false",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }


def spark_session(settings: Settings, app_name: str = "eightbox-backfill") -> SparkSession:
    """A SparkSession for `settings.spark_master` with the contract above. Reuses the running
    session of this process if there is one (Spark allows one per JVM); the caller may `stop()` it."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if settings.spark_master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # one machine: no guessing at interfaces
    builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
    for key, value in _conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(LOG_LEVEL)
    for key in ("spark.sql.session.timeZone", "spark.sql.sources.partitionOverwriteMode",
                "spark.sql.shuffle.partitions", "spark.sql.parquet.outputTimestampType"):
        spark.conf.set(key, _conf(settings)[key])  # a reused session gets the SQL settings too
    return spark
