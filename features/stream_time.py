"""The streaming features' own clock: per table, the newest window end the pusher has written online.

Serving judges whether a session count is still current (`specs.current_for`) against this clock,
not the request's: a stream that lags (a restart, a catching-up backlog, or a simulation running
hours per second) then serves the counts as the stream last knew them instead of zeros. When the
stream keeps up, its clock trails real time by seconds, well inside the rule's one-slide grace.

One Redis hash per Feast project, field = table, value = epoch seconds; only ever moved forward.
"""

from __future__ import annotations

from datetime import datetime
from typing import Mapping

__all__ = ["key", "advance", "read"]

# KEYS[1]: the hash. ARGV: table, epoch seconds. Keeps the larger of the stored and given values.
_ADVANCE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or tonumber(cur) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""


def key(project: str) -> str:
    return f"eightbox:stream-time:{project}"


def advance(client, project: str, newest: Mapping[str, datetime]) -> None:
    """Move each table's clock forward to its newest pushed timestamp (never back)."""
    script = client.register_script(_ADVANCE)
    for table, ts in newest.items():
        script(keys=[key(project)], args=[table, repr(ts.timestamp())])


def read(client, project: str) -> dict[str, float]:
    """{table: epoch seconds} of every table the pusher has written."""
    return {k.decode() if isinstance(k, bytes) else k: float(v) for k, v in client.hgetall(key(project)).items()}
