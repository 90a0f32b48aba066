"""Figures of the merge explorer, drawn from a :class:`~sammerge.explorer.service.Comparison` (they only read it)."""
from __future__ import annotations

from typing import Mapping, Sequence

from sammerge.evaluation.search import SweepResult
from sammerge.explorer.service import Comparison
from sammerge.explorer.style import MIXED_COLOR, PRETRAINED_COLOR, variant_color, variant_label
from sammerge.merging import MergeSpec

__all__ = ["bar_figure", "radar_figure", "sweep_figure", "sam_vs_plain_sentence"]


def bar_figure(cmp: Comparison):
    """Grouped bars per task: pretrained, each individual model, each all-variant merge (+ the mixed merge)."""
    import plotly.graph_objects as go

    table, state, variants = cmp.table(), cmp.spec, cmp.variants
    fig = go.Figure()
    tasks = list(table["task"])
    labels = [t if inc else f"{t} (excluded)" for t, inc in zip(tasks, table["included"])]
    fig.add_bar(name="pretrained", x=labels, y=table["pretrained"], marker_color=PRETRAINED_COLOR)
    for v in variants:
        fig.add_bar(name=f"fine-tuned ({variant_label(v)})", x=labels, y=table[f"fine-tuned ({variant_label(v)})"],
                    marker_color=variant_color(v, variants), opacity=0.35)
    for v in variants:
        fig.add_bar(name=f"merged, all {variant_label(v)}", x=labels, y=table[f"merged, all {variant_label(v)}"],
                    marker_color=variant_color(v, variants))
    if state.uniform_variant() is None:
        fig.add_bar(name="merged (as chosen)", x=labels, y=table["merged"], marker_color=MIXED_COLOR)
    fig.update_layout(barmode="group", yaxis=dict(title=f"accuracy ({cmp.split})", range=[0, 1.02],
                                                  tickformat=".0%"),
                      legend=dict(orientation="h", y=1.15), margin=dict(l=60, r=10, t=50, b=40), height=400)
    return fig
def radar_figure(cmp: Comparison):
    """One spoke per merged task: pretrained, individual models and merges."""
    import plotly.graph_objects as go

    table, state, variants = cmp.table(), cmp.spec, cmp.variants
    inc = table[table["included"]]
    theta = list(inc["task"]) + [inc["task"].iloc[0]]

    def closed(col):
        return list(inc[col]) + [inc[col].iloc[0]]

    fig = go.Figure()
    fig.add_trace(go.Scatterpolar(r=closed("pretrained"), theta=theta, name="pretrained",
                                  line=dict(color=PRETRAINED_COLOR, dash="dot")))
    for v in variants:
        c = variant_color(v, variants)
        fig.add_trace(go.Scatterpolar(r=closed(f"fine-tuned ({variant_label(v)})"), theta=theta,
                                      name=f"fine-tuned ({variant_label(v)})", line=dict(color=c, dash="dash", width=1)))
        fig.add_trace(go.Scatterpolar(r=closed(f"merged, all {variant_label(v)}"), theta=theta,
                                      name=f"merged, all {variant_label(v)}", line=dict(color=c, width=3)))
    if state.uniform_variant() is None:
        fig.add_trace(go.Scatterpolar(r=closed("merged"), theta=theta, name="merged (as chosen)",
                                      line=dict(color=MIXED_COLOR, width=3)))
    fig.update_layout(polar=dict(radialaxis=dict(range=[0, 1], tickformat=".0%")), height=420,
                      legend=dict(orientation="h", y=-0.1), margin=dict(l=30, r=30, t=30, b=30))
    return fig
def sweep_figure(sweeps: Mapping[str, SweepResult], spec: MergeSpec, variants: Sequence[str], split: str):
    """Mean accuracy vs shared λ for the merge and its twins; stars at each best λ, a line at the current λ."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, sw in sweeps.items():
        if name == "current" and spec.uniform_variant() is not None:
            continue  # identical to the all-<variant> curve
        color = MIXED_COLOR if name == "current" else variant_color(name, variants)
        label = "as chosen" if name == "current" else f"all {variant_label(name)}"
        if sw.lambdas:
            fig.add_trace(go.Scatter(x=sw.lambdas, y=sw.val_mean, mode="lines+markers", name=label,
                                     line=dict(color=color)))
            fig.add_trace(go.Scatter(x=[sw.best_lambda], y=[sw.best_val_mean], mode="markers", showlegend=False,
                                     marker=dict(symbol="star", size=14, color=color),
                                     hovertemplate=f"best λ for {label}: %{{x}}<br>mean acc %{{y:.1%}}<extra></extra>"))
    if spec.has_lambda:
        fig.add_vline(x=spec.lam, line_dash="dash", line_color="#444",
                      annotation_text=f"current λ = {spec.lam:g}", annotation_position="top")
    fig.update_layout(xaxis_title="shared λ", yaxis=dict(title=f"mean accuracy ({split})", tickformat=".0%"),
                      height=340, margin=dict(l=60, r=10, t=40, b=45), legend=dict(orientation="h", y=1.18))
    return fig


def sam_vs_plain_sentence(summaries: Mapping[str, Mapping[str, float]], what: str = "this merge") -> str:
    """One sentence comparing the all-SAM and all-plain versions in normalized and absolute accuracy, derived from
    the measured numbers; when the two disagree it says so (weaker individual models raise normalized accuracy)."""
    if "sam" not in summaries or "plain" not in summaries:
        return ""
    s, p = summaries["sam"]["normalized"], summaries["plain"]["normalized"]
    sa, pa = summaries["sam"]["mean"], summaries["plain"]["mean"]
    dn, da = 100 * (s - p), 100 * (sa - pa)
    if abs(dn) < 0.05 and abs(da) < 0.05:
        verdict = "SAM and plain fine-tuning merge equally well here"
    elif dn > 0 and da > 0:
        verdict = f"SAM fine-tuning merges better here, by {dn:.1f} points of normalized and {da:.1f} of absolute accuracy"
    elif dn <= 0 and da <= 0:
        verdict = (f"SAM does **not** beat plain fine-tuning here: it is behind by {-dn:.1f} points of normalized and "
                   f"{-da:.1f} of absolute accuracy")
    elif dn > 0:
        verdict = (f"SAM keeps {dn:.1f} points more of its own fine-tuned models' accuracy, but its merge is {-da:.1f} "
                   "points **lower** in absolute accuracy — its individual models are weaker, which raises normalized "
                   "accuracy; compare at equal individual accuracy (the Zoo page's seed study) before concluding")
    else:
        verdict = (f"SAM's merge is {da:.1f} points higher in absolute accuracy but keeps {-dn:.1f} points less of its "
                   "own fine-tuned models' accuracy (its individual models are stronger)")
    return (f"For {what}: {verdict} (all-SAM {s:.1%} normalized / {sa:.1%} absolute vs all-plain "
            f"{p:.1%} / {pa:.1%}).")
