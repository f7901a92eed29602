"""The `monitoring` lake table: every check of every run, Parquet, partitioned by run date.

Layout: ``<lake>/monitoring/dt=YYYY-MM-DD/<window start>--<window end>.parquet``, the date being the
window's end (the run's time in simulated or real time alike). Rerunning a window replaces its
file; files are written atomically with the raw lake's writer.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from eightbox.ingest.lake import write_atomic
from eightbox.settings import Settings

from .results import MonitoringResult

TABLE = "monitoring"


def table_dir(settings: Settings) -> Path:
    return settings.lake_dir / TABLE


def write_result(settings: Settings, result: MonitoringResult) -> Path:
    """Write one run's checks; returns the file."""
    start, end = pd.Timestamp(result.start), pd.Timestamp(result.end)
    path = table_dir(settings) / f"dt={end:%Y-%m-%d}" / f"{start:%Y%m%dT%H%M%S}--{end:%Y%m%dT%H%M%S}.parquet"
    write_atomic(pa.Table.from_pandas(result.to_frame(), preserve_index=False), path)
    return path


def read_results(settings: Settings, since: date | None = None) -> pd.DataFrame:
    """Every stored check, oldest window first (empty when monitoring never ran); with `since`, only
    the windows that ended on or after that date (the partitions before it are not read)."""
    files = sorted(f for f in table_dir(settings).glob("dt=*/*.parquet")
                   if since is None or f.parent.name >= f"dt={since:%Y-%m-%d}")
    if not files:
        return pd.DataFrame()
    df = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    return df.sort_values(["window_end", "layer", "check", "subject"], ignore_index=True)
