"""A bundle ranker component that records every matrix it is asked to score, for the feature-logging
test: the real `MultiTaskRanker` behind it scores, and each `predict(frame)` first appends the
frame's float64 bit patterns to a JSON-lines file named in the component folder. The serving process
loads it through the bundle's loader string like any ranker, so the capture sits exactly at the
ranker boundary and production code has no test hook.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from eightbox.ranking.multitask import MultiTaskRanker

CAPTURE_FILE = "capture.json"  # in the component folder: {"to": <path of the JSON-lines file>}
LOADER = f"{__name__}:RecordingRanker.load"


class RecordingRanker:
    def __init__(self, ranker: MultiTaskRanker, capture_to: Path):
        self.ranker, self.capture_to = ranker, capture_to
        self.features, self.version = ranker.features, ranker.version
        self._lock = threading.Lock()

    @classmethod
    def save_with(cls, ranker: MultiTaskRanker, directory: Path, capture_to: Path) -> None:
        """Write `ranker` into `directory` as this component, capturing to `capture_to`."""
        ranker.save(directory)
        (directory / CAPTURE_FILE).write_text(json.dumps({"to": str(capture_to)}))

    @classmethod
    def load(cls, directory: str | Path) -> RecordingRanker:
        directory = Path(directory)
        return cls(MultiTaskRanker.load(directory), Path(json.loads((directory / CAPTURE_FILE).read_text())["to"]))

    def predict(self, df: pd.DataFrame, *args, **kwargs) -> pd.DataFrame:
        bits = np.ascontiguousarray(df.to_numpy(dtype=np.float64)).view(np.uint64)  # (rows, features)
        line = json.dumps({"columns": list(df.columns), "rows": bits.tolist()}) + "\n"
        with self._lock, open(self.capture_to, "a") as f:  # one write per call: whole lines only
            f.write(line)
        return self.ranker.predict(df, *args, **kwargs)


def read_captures(path: Path) -> list[dict]:
    """Every recorded call, in order: {"columns": [...], "rows": [[uint64 bits, ...], ...]}."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
