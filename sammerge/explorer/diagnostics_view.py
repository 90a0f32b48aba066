"""Tables, figures and a reading of the regime diagnostics (``sammerge.analytics.diagnostics``), plain vs SAM.

Everything reads the JSON-able dict of :func:`sammerge.analytics.diagnostics.diagnose_zoo`; nothing recomputes.
"""
from __future__ import annotations

import math
from typing import Mapping

import pandas as pd

from sammerge.explorer.style import PRETRAINED_COLOR, variant_color, variant_label

SUMMARY_COLUMNS = {
    "pretrained": "pretrained (%)", "individual": "individual (%)", "best_lambda": "best λ",
    "merged_best": "TA at best λ (%)", "normalized_best": "normalized (%)", "gap_closed_best": "gap closed (%)",
    "merged_at_1/T": "TA at λ=1/T (%)", "merged_at_0.3": "TA at λ=0.3 (%)", "merged_at_0.5": "TA at λ=0.5 (%)",
    "mean_rel_norm": "‖τ‖/‖θ0‖", "mean_pairwise_cosine": "mean cos(τ_s, τ_t)",
    "own_share_at_0.3": "own gain at α=0.3 (% of full)", "damage_at_0.3": "damage at β=0.3 (pts)",
}
_PERCENT = {"pretrained", "individual", "merged_best", "normalized_best", "gap_closed_best", "merged_at_1/T",
            "merged_at_0.3", "merged_at_0.5", "own_share_at_0.3", "damage_at_0.3"}


def summary_table(diag: Mapping) -> pd.DataFrame:
    """One row per variant: the regime's numbers (accuracies and shares in %, damage in points)."""
    rows = []
    for variant, d in diag["variants"].items():
        values = {**d["summary"], "mean_rel_norm": d["vectors"]["mean_rel_norm"],
                  "mean_pairwise_cosine": d["vectors"]["mean_pairwise_cosine"]}
        row = {"variant": variant_label(variant)}
        for key, label in SUMMARY_COLUMNS.items():
            value = values[key]
            row[label] = 100 * value if key in _PERCENT and value is not None else value  # None: NaN in the JSON
        rows.append(row)
    return pd.DataFrame(rows)


def per_task_table(diag: Mapping) -> pd.DataFrame:
    """One row per (task, variant): pretrained, individual, own gain at α = 0.5, damage at β = 0.5 (val, %)."""
    rows = []
    for variant, d in diag["variants"].items():
        alphas = d["curves"]["alphas"]
        mid = min(range(len(alphas)), key=lambda i: abs(alphas[i] - 0.5))
        for task in diag["tasks"]:
            rows.append({"task": task, "variant": variant_label(variant),
                         "pretrained (%)": 100 * d["pretrained_per_task"][task],
                         "individual (%)": 100 * d["individual_per_task"][task],
                         f"own θ0+{alphas[mid]:g}τ_t (%)": 100 * d["curves"]["own"][task][mid],
                         f"others θ0+{alphas[mid]:g}Στ_s (%)": 100 * d["curves"]["damage"][task][mid],
                         "‖τ_t‖/‖θ0‖": d["vectors"]["rel_norm"][task]})
    return pd.DataFrame(rows)


def merge_curve_figure(diag: Mapping):
    """Mean accuracy of θ0 + λ Σ τ_t against λ, one line per variant, with each variant's individual mean."""
    import plotly.graph_objects as go

    fig = go.Figure()
    variants = list(diag["variants"])
    for variant, d in diag["variants"].items():
        curve, color = d["merge_curve"], variant_color(variant, variants)
        fig.add_trace(go.Scatter(x=curve["lambdas"], y=[100 * m for m in curve["mean"]], mode="lines+markers",
                                 name=f"task arithmetic ({variant_label(variant)})", line=dict(color=color)))
        fig.add_hline(y=100 * d["summary"]["individual"], line=dict(color=color, dash="dot"),
                      annotation_text=f"individual ({variant_label(variant)})")
    first = next(iter(diag["variants"].values()))
    fig.add_hline(y=100 * first["summary"]["pretrained"], line=dict(color=PRETRAINED_COLOR, dash="dash"),
                  annotation_text="pretrained")
    fig.update_layout(xaxis_title="λ (θ0 + λ Σ_t τ_t)", yaxis_title="mean accuracy (%)", height=380,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h"))
    return fig


def own_and_damage_figure(diag: Mapping, task: str):
    """For one task: own gain acc_t(θ0 + α τ_t) (solid) and damage acc_t(θ0 + β Σ_{s≠t} τ_s) (dashed), per variant."""
    import plotly.graph_objects as go

    fig = go.Figure()
    variants = list(diag["variants"])
    for variant, d in diag["variants"].items():
        c, color, label = d["curves"], variant_color(variant, variants), variant_label(variant)
        fig.add_trace(go.Scatter(x=c["alphas"], y=[100 * a for a in c["own"][task]], mode="lines+markers",
                                 name=f"own: θ0 + α τ_{task} ({label})", line=dict(color=color)))
        fig.add_trace(go.Scatter(x=c["alphas"], y=[100 * a for a in c["damage"][task]], mode="lines+markers",
                                 name=f"others: θ0 + β Σ τ_s ({label})", line=dict(color=color, dash="dash")))
    fig.update_layout(title=f"{task}: own gain vs damage from the other task vectors", xaxis_title="α / β",
                      yaxis_title=f"accuracy on {task} (%)", height=360, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h"))
    return fig


def _pct(value, spec: str = ".1f") -> str:
    """100·value formatted, or "n/a" (NaN is stored as null in the cached JSON)."""
    return "n/a" if value is None or math.isnan(value) else format(100 * value, spec)


def reading(diag: Mapping) -> str:
    """One sentence per variant: does merging work here, and why not (slow own gain or damage from the others)?"""
    parts = []
    for variant, d in diag["variants"].items():
        s = d["summary"]
        gap = s["gap_closed_best"]
        if gap is None or math.isnan(gap):
            verdict = "fine-tuning gained nothing, so there is no gap to close"
        else:
            verdict = ("merging works (≥ 50 % of the gap closed)" if gap >= 0.5 else
                       "merging helps a little" if gap >= 0.2 else "merging barely helps")
        parts.append(f"{variant_label(variant)}: task arithmetic at λ = {s['best_lambda']:g} scores "
                     f"{_pct(s['merged_best'])} % between pretrained {_pct(s['pretrained'])} % and individual "
                     f"{_pct(s['individual'])} % — {_pct(gap, '.0f')} % of the gap closed, {verdict}; at α = 0.3 a "
                     f"task keeps {_pct(s['own_share_at_0.3'], '.0f')} % of its own gain while 0.3 · Σ of the other "
                     f"vectors moves it by {_pct(s['damage_at_0.3'], '+.1f')} points.")
    return " ".join(parts)
