"""The HTML report is one self-contained page: four PNG plots inlined, alerts first, every check."""

from __future__ import annotations

import base64
import re
from datetime import datetime, timezone

import pandas as pd

from eightbox.monitoring.report import render_html, write_report
from eightbox.monitoring.results import CheckResult, MonitoringResult
from eightbox.monitoring.thresholds import ACT, NO_DATA, STABLE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def result(with_data: bool) -> MonitoringResult:
    checks = [CheckResult("data", "psi", "item_ctr_7d", 0.31, ACT, 0.1, 0.2, "shifted"),
              CheckResult("data", "psi", "uc_clicks_30m", 0.02, STABLE, 0.1, 0.2),
              CheckResult("system", "consumer_lag", "lake-archiver", float("nan"), NO_DATA, detail="<no broker>")]
    r = MonitoringResult(datetime(2024, 5, 2, tzinfo=timezone.utc), datetime(2024, 5, 3, tzinfo=timezone.utc),
                         "eightbox-recommender", "4", checks)
    if with_data:
        r.score_bins = pd.DataFrame({"score": "p_click", "lower": [float("-inf"), 0.02, 0.05],
                                     "reference": [0.3, 0.4, 0.3], "live": [0.2, 0.4, 0.4]})
        r.daily = pd.DataFrame({"day": pd.to_datetime(["2024-05-02", "2024-05-02"], utc=True),
                                "segment": ["new", "returning"], "impressions": [10, 10], "clicks": [1, 3],
                                "ctr": [0.1, 0.3]})
        r.calibration = pd.DataFrame({"bin": [0, 1], "mean_p": [0.05, 0.15], "rate": [0.04, 0.2], "rows": [50, 50],
                                      "score": "p_click"})
    return r


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_the_report_inlines_four_plots_and_names_the_alert_first(tmp_path):
    path = write_report(result(with_data=True), tmp_path / "out" / "report.html")
    page = path.read_text(encoding="utf-8")
    pngs = images(page)
    assert len(pngs) == 4 and all(p.startswith(PNG_MAGIC) and len(p) > 2000 for p in pngs)
    assert page.index("data/psi[item_ctr_7d] = 0.31 &gt; 0.2: shifted") < page.index("<h2>system</h2>")
    assert "&lt;no broker&gt;" in page and "<no broker>" not in page  # details are escaped
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_a_window_without_data_still_renders_every_plot():
    page = render_html(result(with_data=False))
    assert len(images(page)) == 4
