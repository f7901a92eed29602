"""The closed loop's page: CTR per day for our policy, popularity and the oracle, with the drift,
its detection, the retrain and the promotion marked; the summary; links to each day's monitoring page."""

from __future__ import annotations

import html
import re
from pathlib import Path

from eightbox.monitoring.report import _png, plt


def ctr_plot(summary: dict, drift_day: int) -> str:
    days = summary["days"]
    x = [d["day"] for d in days]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, label, style in (("ctr_oracle", "oracle", ":"), ("ctr_expected", "Eightbox (served)", "-o"),
                              ("ctr_popularity", "popularity", "--")):
        ax.plot(x, [d[key] for d in days], style, label=label)
    ax.axvline(drift_day - 0.5, color="red", alpha=0.6, label="drift starts")
    for d in days:
        if labels := _events(d["notes"]):
            ax.annotate("\n".join(labels), (d["day"], d["ctr_expected"]),
                        fontsize=7, xytext=(0, 10), textcoords="offset points", ha="center")
    ax.set_xlabel("simulated day")
    ax.set_ylabel("expected CTR per slot")
    ax.set_xticks(x)
    ax.legend(fontsize=7)
    return _png(fig)


def _events(notes: list[str]) -> list[str]:
    """Short plot labels for a day's ladder and training notes: "v3 promoted", "v5 refused", ..."""
    out = []
    for note in notes:
        version = re.search(r"v(\d+)", note)
        v = f"v{version.group(1)} " if version else ""
        for words, label in (("→ champion", "promoted"), ("→ rolled_back", "rejected"), ("gate refused", "refused"),
                             ("gate passed", "trained")):
            if words in note:
                out.append(v + label)
                break
    return out


def _day_column(day: dict) -> list[str]:
    """The day's ladder and training notes, its concept-drift alerts, and how many other alerts
    its monitoring page lists (diagnosis: feature PSI, ranges, calibration, KPIs)."""
    drift = day.get("drift_alerts", [])
    others = len(day["alerts"]) - len(drift)
    return day["notes"] + drift + ([f"{others} other alert(s)"] if others else [])


def write_loop_report(summary: dict, drift_day: int, path: Path) -> Path:
    rows = "".join(
        f"<tr><td>{d['day']}</td><td>{d['date']}</td><td>{d['ctr_expected']:.4f}</td><td>{d['ctr']:.4f}</td>"
        f"<td>{d['ctr_popularity']:.4f}</td><td>{d['ctr_oracle']:.4f}</td><td>{d['p99_ms']:.1f}</td>"
        f"<td>{html.escape(str(d['rungs']))}</td><td>{html.escape('; '.join(_day_column(d)))}</td>"
        f"<td><a href=\"monitoring-day{d['day']}.html\">day {d['day']}</a></td></tr>" for d in summary["days"])
    facts = "".join(f"<li>{k}: {html.escape(str(v))}</li>" for k, v in summary.items() if k != "days")
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>Eightbox closed loop</title>
<style>body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}</style></head><body>
<h1>Eightbox closed loop</h1><img alt="CTR per day" src="data:image/png;base64,{ctr_plot(summary, drift_day)}">
<ul>{facts}</ul>
<table><tr><th>day</th><th>date</th><th>ours (expected)</th><th>ours (realised)</th><th>popularity</th>
<th>oracle</th><th>p99 ms</th><th>rungs</th><th>events, concept drift and other alerts</th><th>monitoring</th></tr>{rows}</table>
</body></html>""", encoding="utf-8")
    return path
