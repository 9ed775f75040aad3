"""The part of each HTML report a person reads first: the verdict, its evidence, charts.

Evidently renders its widgets with JavaScript below whatever the page body starts with, so
the report opens with a plain HTML block written here: the verdict in one sentence, the
suggested action, the table of features (drifted first, by effect size), the ranking
signals in plain words and, in the concept report, click-NDCG before/after with its 95%
interval and click-through rate by score decile and by position as small SVG charts (no
JavaScript, so a screenshot or a mail client shows them too).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitoring.report import DriftSummary

_COLORS = {"reference": "#9aa5b1", "current": "#d9480f", "ok": "#2b8a3e", "alarm": "#c92a2a"}
_STYLE = (
    "font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;max-width:1180px;"
    "margin:16px auto;padding:16px 20px;border:1px solid #dee2e6;border-radius:8px;"
    "background:#fff;color:#212529;font-size:14px;line-height:1.45"
)


def _e(v: Any) -> str:
    return html.escape(str(v))


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    width: int = 540,
    height: int = 180,
    errors: dict[str, Sequence[tuple[float, float]]] | None = None,
    pct: bool = True,
) -> str:
    """Grouped bars (one group per label, one bar per series) as inline SVG."""
    vals = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    for errs in (errors or {}).values():
        vals += [hi for _, hi in errs if math.isfinite(hi)]
    top = max(vals, default=1.0) or 1.0
    pad_l, pad_b, pad_t = 40, 22, 38
    plot_w, plot_h = width - pad_l - 8, height - pad_b - pad_t
    group_w = plot_w / max(len(labels), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    out = [
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
        f'style="background:#fafafa;margin:4px 12px 4px 0">',
        f'<text x="{pad_l}" y="14" font-size="13" font-weight="600">{_e(title)}</text>',
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - 8}" y2="{pad_t + plot_h}" '
        'stroke="#868e96"/>',
        f'<text x="2" y="{pad_t + 10}" font-size="10">{top:.0%}</text>'
        if pct
        else f'<text x="2" y="{pad_t + 10}" font-size="10">{top:.2f}</text>',
    ]
    for i, lab in enumerate(labels):
        x0 = pad_l + i * group_w + group_w * 0.1
        for j, (name, s) in enumerate(series.items()):
            v = s[i] if i < len(s) else math.nan
            if v is None or not math.isfinite(v):
                continue
            h = plot_h * v / top
            x = x0 + j * bar_w
            y = pad_t + plot_h - h
            color = _COLORS.get(name, "#1971c2")
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                f'fill="{color}"><title>{_e(name)} {_e(lab)}: {v:.3f}</title></rect>'
            )
            if errors and name in errors and i < len(errors[name]):
                lo, hi = errors[name][i]
                if math.isfinite(lo) and math.isfinite(hi):
                    cx = x + (bar_w - 1) / 2
                    y_lo, y_hi = pad_t + plot_h * (1 - lo / top), pad_t + plot_h * (1 - hi / top)
                    out.append(
                        f'<line x1="{cx:.1f}" y1="{y_lo:.1f}" x2="{cx:.1f}" y2="{y_hi:.1f}" '
                        'stroke="#212529" stroke-width="2"/>'
                    )
        out.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{height - 6}" font-size="10" '
            f'text-anchor="middle">{_e(lab)}</text>'
        )
    for j, name in enumerate(series):  # legend under the title
        out.append(
            f'<rect x="{pad_l + j * 90}" y="20" width="10" height="10" '
            f'fill="{_COLORS.get(name, "#1971c2")}"/><text x="{pad_l + j * 90 + 14}" y="29" '
            f'font-size="11">{_e(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _verdict(summary: DriftSummary) -> str:
    color = _COLORS["ok"] if not summary.drifted else _COLORS["alarm"]
    action = summary.action()
    return (
        f'<h1 style="font-size:22px;margin:0 0 6px;color:{color}">{_e(summary.verdict())}</h1>'
        f'<div style="color:#495057">Window {_e(summary.window.to_dict()["since"])} .. '
        f"{_e(summary.window.to_dict()['until'])} &middot; model {_e(summary.model_version)}"
        f" &middot; {summary.features.current_rows} served rows"
        + (f" &middot; <b>suggested action: {_e(action)}</b>" if action != "none" else "")
        + "</div>"
    )


def _signals(summary: DriftSummary) -> str:
    if not summary.signals:
        return ""
    items = "".join(
        f'<li style="color:{_COLORS["alarm"] if s.get("drifted") else "inherit"}">'
        f"{_e(s.get('line', ''))}</li>"
        for s in summary.signals.values()
    )
    return f'<h2 style="font-size:16px;margin:14px 0 4px">Ranking signals</h2><ul>{items}</ul>'


def _status(f: Any) -> str:
    if f.drifted:
        return "drifted"
    if f.trend:
        return "moved (trend)"
    return "ok" if f.tested else "not tested"


def feature_table(summary: DriftSummary, limit: int = 12) -> str:
    rows = []
    for f in summary.features.ranked()[:limit]:
        color = _COLORS["alarm"] if f.drifted else "inherit"
        rows.append(
            f'<tr style="color:{color}"><td>{_e(f.name)}</td><td>{_e(f.group)}</td>'
            f"<td>{_status(f)}</td>"
            f"<td>{_f(f.effect, 2)}</td><td>{_e(f.method)} {_f(f.score)} "
            f"({'p-value' if f.score_kind == 'p_value' else 'distance'}, threshold "
            f"{_f(f.threshold)})</td><td>{_f(f.reference_nan_share, 2)} &rarr; "
            f"{_f(f.current_nan_share, 2)}</td><td>{_e(f.reason)}</td></tr>"
        )
    more = len(summary.features.features) - limit
    return (
        '<h2 style="font-size:16px;margin:14px 0 4px">Features, drifted first by effect size'
        "</h2>"
        '<table style="border-collapse:collapse;font-size:13px" cellpadding="3">'
        "<tr style='text-align:left;border-bottom:1px solid #ced4da'><th>feature</th>"
        "<th>group</th><th>verdict</th><th>effect</th><th>test</th><th>missing share</th>"
        "<th>note</th></tr>"
        + "".join(rows)
        + "</table>"
        + (f"<div style='color:#868e96'>+ {more} more below, same order</div>" if more > 0 else "")
    )


def concept_charts(summary: DriftSummary) -> str:
    c = summary.concept
    if c is None:
        return ""
    parts = []
    if c.reference is not None:
        r_lo, r_hi, c_lo, c_hi = c.interval()
        parts.append(
            bar_chart(
                f"click-{c.metric}: before {_f(c.reference_value)} -> now {_f(c.current_value)}",
                [c.metric],
                {"reference": [c.reference_value], "current": [c.current_value]},
                width=380,
                errors={"reference": [(r_lo, r_hi)], "current": [(c_lo, c_hi)]},
                pct=False,
            )
        )
    dec = c.click_rate_by_decile
    if dec:
        parts.append(
            bar_chart(
                "CTR by model-score decile",
                [str(d["decile"]) for d in dec],
                {
                    "reference": [d.get("reference_click_rate", math.nan) for d in dec],
                    "current": [d.get("current_click_rate", math.nan) for d in dec],
                },
            )
        )
    curve = summary.signals.get("click_curve")
    if curve:
        pos = curve["positions"]
        parts.append(
            bar_chart(
                "CTR by position",
                [str(p["position"]) for p in pos],
                {
                    "reference": [p["reference_ctr"] or math.nan for p in pos],
                    "current": [p["current_ctr"] or math.nan for p in pos],
                },
            )
        )
    note = (
        f"<div style='color:#495057'>{_e(c.quality_note)}</div>"
        if c.quality_note
        else f"<div style='color:#495057'>95% intervals (black): reference "
        f"{_f(c.interval()[0])}..{_f(c.interval()[1])}, current {_f(c.interval()[2])}.."
        f"{_f(c.interval()[3])}; {c.current.labelled_requests} clicked requests now, "
        f"{c.reference.labelled_requests if c.reference else 0} before.</div>"
    )
    return (
        '<h2 style="font-size:16px;margin:14px 0 4px">Quality and clicks</h2>'
        + note
        + "<div>"
        + "".join(parts)
        + "</div>"
    )


def header(summary: DriftSummary, page: str) -> str:
    """The block that opens ``features.html`` (page="features") or ``concept.html``."""
    body = [_verdict(summary)]
    if page == "concept":
        body += [concept_charts(summary), _signals(summary)]
        body.append(
            "<div style='color:#868e96;margin-top:8px'>Below: model score and retriever "
            "score distributions, previous window vs this one (Evidently).</div>"
        )
    else:
        body += [feature_table(summary), _signals(summary)]
        body.append(
            "<div style='color:#868e96;margin-top:8px'>Below: one Evidently widget per "
            "tested feature, drifted first by effect size.</div>"
        )
    return f'<div style="{_STYLE}">' + "".join(body) + "</div>"


def inject(path: Path, block: str) -> None:
    """Put ``block`` right after <body> of an Evidently HTML file (in place)."""
    text = path.read_text(encoding="utf-8")
    i = text.find("<body>")
    if i < 0:
        text = block + text
    else:
        i += len("<body>")
        text = text[:i] + block + text[i:]
    path.write_text(text, encoding="utf-8")
