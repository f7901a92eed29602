"""One self-contained HTML page per monitoring run: alerts first, four plots (PNG inlined as base64),
then every check by layer.

Plots: PSI per feature against the watch / act lines; the score distribution live vs the training
reference (shares per reference bin); CTR per day by segment; the calibration curve (mean predicted
P(click) vs observed click rate per bin, with the diagonal of perfect calibration).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never a display, in a service or a test
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .results import LAYERS, MonitoringResult  # noqa: E402
from .thresholds import ACT, WATCH  # noqa: E402

COLOURS = {ACT: "#f8d7da", WATCH: "#fff3cd"}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this window", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def psi_plot(result: MonitoringResult) -> str:
    psi = [c for c in result.checks if c.layer == "data" and c.check == "psi"]
    fig, ax = plt.subplots(figsize=(7, 0.3 * max(len(psi), 4) + 1))
    if not psi:
        _empty(ax, "feature values")
    else:
        psi.sort(key=lambda c: c.subject)
        ax.barh([c.subject for c in psi], [c.value for c in psi],
                color=["#c0392b" if c.status == ACT else "#e1a100" if c.status == WATCH else "#2e86c1" for c in psi])
        for bound, colour, label in ((psi[0].watch, "#e1a100", "watch"), (psi[0].act, "#c0392b", "act")):
            if bound is not None:
                ax.axvline(bound, color=colour, ls="--", label=f"{label} {bound:g}")
        ax.set_xlabel("PSI vs training reference")
        ax.legend(loc="lower right")
    ax.set_title("Feature drift (PSI)")
    return _png(fig)


def score_plot(result: MonitoringResult) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = result.score_bins
    if bins.empty or bins["live"].sum() == 0:
        _empty(ax, "scores")
    else:
        for name, g in bins.groupby("score"):
            x = range(len(g))
            ax.bar([i - 0.2 for i in x], g["reference"], width=0.4, label=f"{name} training")
            ax.bar([i + 0.2 for i in x], g["live"], width=0.4, label=f"{name} live")
            ax.set_xticks(list(x), [f"≥{v:.3g}" if v > float("-inf") else "min" for v in g["lower"]], rotation=45)
        ax.set_ylabel("share of rows")
        ax.legend()
    ax.set_title("Score distribution: live vs training reference")
    return _png(fig)


def ctr_plot(result: MonitoringResult) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    daily = result.daily
    if daily.empty:
        _empty(ax, "matured impressions")
    else:
        # Days as positions, not dates: a one-day window would otherwise span years of axis.
        days = sorted(pd.to_datetime(daily["day"]).unique())
        at = {d: i for i, d in enumerate(days)}
        for segment, g in daily.groupby("segment"):
            ax.plot([at[d] for d in pd.to_datetime(g["day"])], g["ctr"], marker="o", label=segment)
        ax.set_xticks(range(len(days)), [f"{d:%Y-%m-%d}" for d in days], rotation=30)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("CTR")
        ax.legend()
    ax.set_title("CTR per day by segment")
    return _png(fig)


def calibration_plot(result: MonitoringResult) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    cal = result.calibration
    if cal.empty:
        _empty(ax, "matured labels")
    else:
        ax.plot([0, 1], [0, 1], color="grey", ls=":", label="perfect")
        for name, g in cal.groupby("score"):
            ax.plot(g["mean_p"], g["rate"], marker="o", label=name)
        top = max(cal["mean_p"].max(), cal["rate"].max()) * 1.1
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed click rate")
        ax.legend()
    ax.set_title("Calibration")
    return _png(fig)


def _table(checks) -> str:
    rows = []
    for c in checks:
        bound = "" if c.act is None else f"{c.watch:g} / {c.act:g}"
        style = f' style="background:{COLOURS[c.status]}"' if c.status in COLOURS else ""
        rows.append(f"<tr{style}><td>{html.escape(c.check)}</td><td>{html.escape(c.subject)}</td>"
                    f"<td>{c.value:.4g}</td><td>{bound}</td><td>{c.status}</td><td>{html.escape(c.detail)}</td></tr>")
    return ("<table><tr><th>check</th><th>subject</th><th>value</th><th>watch / act</th><th>status</th>"
            "<th>detail</th></tr>" + "".join(rows) + "</table>")


def render_html(result: MonitoringResult) -> str:
    """The report as one HTML string (no external files)."""
    alerts = result.alerts
    plots = "".join(f'<img alt="{alt}" src="data:image/png;base64,{png}">' for alt, png in (
        ("PSI per feature", psi_plot(result)), ("score distribution", score_plot(result)),
        ("CTR per day by segment", ctr_plot(result)), ("calibration curve", calibration_plot(result))))
    layers = "".join(f"<h2>{layer}</h2>" + _table([c for c in result.checks if c.layer == layer]) for layer in LAYERS)
    alert_list = ("<ul>" + "".join(f"<li>{html.escape(a.alert)}</li>" for a in alerts) + "</ul>") if alerts \
        else "<p>No alerts.</p>"
    title = f"Eightbox monitoring {result.start:%Y-%m-%d %H:%M} – {result.end:%Y-%m-%d %H:%M} UTC"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title><style>
body {{ font-family: sans-serif; margin: 2em; }} img {{ margin: 0.5em; vertical-align: top; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
</style></head><body>
<h1>{title}</h1>
<p>Model {html.escape(result.model_name)} v{html.escape(result.model_version)} (champion).
{len(result.checks)} checks, {len(alerts)} at act.</p>
<h2>Alerts</h2>{alert_list}
<div>{plots}</div>
{layers}
</body></html>
"""


def write_report(result: MonitoringResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    return path
