"""Tables, figures and readings of the analysis pages (sharpness, landscape, interference), from a zoo's analysis."""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

import pandas as pd

from sammerge.explorer.style import variant_color, variant_label


SHARPNESS_MEASURES = {
    "top_eigenvalue": ("Top Hessian eigenvalue λ_max", "the largest curvature of the loss at the checkpoint"),
    "trace_mean": ("Hessian trace (Hutchinson)", "the total curvature summed over all directions"),
    "m_sharpness": ("m-sharpness (ρ-ball, worst case)", "how much the loss can rise within a small ball"),
    "m_sharpness_adaptive": ("adaptive m-sharpness", "the same, with a ball scaled to each weight's size"),
    "avg_sharpness": ("average sharpness (Gaussian)", "the loss increase under random small perturbations"),
}


def load_analysis_for(zoo) -> dict | None:
    """The zoo's precomputed analysis (``sammerge analyze``) if present and current, else None."""
    from sammerge.analytics.report import load_analysis
    return load_analysis(zoo)


def checkpoint_table(zoo, analysis: Mapping | None = None) -> pd.DataFrame:
    """The zoo's checkpoint table (task, fine-tuning, ρ, accuracies) plus sharpness when an analysis exists."""
    table = zoo.table()
    rho = {(r.task, r.variant): (r.method.get("rho") if r.method.get("sam") else None) for r in zoo.manifest.checkpoints}
    table.insert(3, "ρ", [f"{rho[(t, v)]:g}" if rho.get((t, v)) is not None else "—"  # text: "—" for plain
                          for t, v in zip(table["task"], table["variant"])])
    if analysis:
        sharp = pd.DataFrame(analysis["sharpness"])[["task", "variant", "top_eigenvalue", "trace_mean"]]
        sharp = sharp.rename(columns={"top_eigenvalue": "λ_max (Hessian)", "trace_mean": "Hessian trace"})
        table = table.merge(sharp, on=["task", "variant"], how="left")
    return table


def sharpness_frame(analysis: Mapping) -> pd.DataFrame:
    """Long table: one row per (task, variant) with every sharpness measure."""
    df = pd.DataFrame(analysis["sharpness"])
    keep = ["task", "variant"] + [c for c in ["top_eigenvalue", "trace_mean", "trace_se", "m_sharpness",
                                              "m_sharpness_adaptive", "avg_sharpness", "loss", "accuracy"]
                                  if c in df.columns]
    return df[keep]


def sharpness_wide(analysis: Mapping, measure: str) -> pd.DataFrame:
    df = sharpness_frame(analysis)
    wide = df.pivot(index="task", columns="variant", values=measure)
    wide = wide.reindex(list(dict.fromkeys(df["task"])))
    wide.columns = [variant_label(c) for c in wide.columns]
    return wide.reset_index()


def sharpness_figure(analysis: Mapping, measure: str, log: bool = True):
    import plotly.graph_objects as go

    df = sharpness_frame(analysis)
    variants = list(dict.fromkeys(df["variant"]))
    fig = go.Figure()
    for v in variants:
        sub = df[df["variant"] == v]
        fig.add_bar(name=variant_label(v), x=sub["task"], y=sub[measure], marker_color=variant_color(v, variants))
    label = SHARPNESS_MEASURES.get(measure, (measure, ""))[0]
    fig.update_layout(barmode="group", yaxis=dict(title=label + (" (log scale)" if log else ""),
                                                  type="log" if log else "linear"),
                      height=360, margin=dict(l=60, r=10, t=40, b=40), legend=dict(orientation="h", y=1.15))
    return fig


def sharpness_sentence(analysis: Mapping, measure: str) -> str:
    """Which variant is flatter, on how many tasks, from the measured numbers."""
    df = sharpness_frame(analysis)
    if not {"plain", "sam"} <= set(df["variant"]):
        return ""
    wide = df.pivot(index="task", columns="variant", values=measure).dropna()
    n = len(wide)
    flatter = int((wide["sam"] < wide["plain"]).sum())
    label = SHARPNESS_MEASURES.get(measure, (measure, ""))[0]
    ratio = float(statistics.median((wide["sam"] / wide["plain"]).tolist())) if n else float("nan")
    verdict = ("SAM checkpoints are flatter" if flatter > n / 2 else
               "SAM checkpoints are **not** flatter than plain ones" if flatter < n / 2 else "it is a draw")
    return (f"By {label[0].lower() + label[1:]}, {verdict} here: SAM is lower on {flatter} of {n} tasks "
            f"(median SAM/plain ratio {ratio:.2f}; mean plain {wide['plain'].mean():.3g}, SAM {wide['sam'].mean():.3g}).")


def curve_figure(curves: Mapping[str, Any], task: str, what: str = "loss"):
    """1-D interpolation curves θ0→θ_t, one per variant (keys: variant names), of ``what`` (loss/accuracy) on ``task``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for variant, curve in curves.items():
        values = getattr(curve, what)
        series = values.get(task)
        if series is None:  # a merged curve: mean over its tasks
            series = sum(values.values()) / len(values)
        fig.add_trace(go.Scatter(x=curve.alphas, y=series, mode="lines+markers",
                                 name=f"θ₀→θ_t ({variant_label(variant)})",
                                 line=dict(color=variant_color(variant, list(curves)))))
    fig.update_layout(xaxis_title="α (0 = θ₀, 1 = the fine-tuned model)", yaxis=dict(
        title=f"{what} on {task}", tickformat=".0%" if what == "accuracy" else None), height=330,
        margin=dict(l=70, r=10, t=40, b=60), legend=dict(orientation="h", y=1.15))
    return fig


def plane_values(plane, what: str) -> "Any":
    """A plane's grid [len(ys), len(xs)] of: 'loss i', 'loss j', 'mean loss', 'mean accuracy' (tasks in order)."""
    import numpy as np

    tasks = list(plane.loss)
    if what == "mean accuracy":
        z = np.mean([plane.accuracy[t] for t in tasks], axis=0)
    elif what == "mean loss":
        z = np.mean([plane.loss[t] for t in tasks], axis=0)
    else:
        z = plane.loss[what]
    return np.asarray(z).T  # rows: y, columns: x


def plane_figures(planes: Mapping[str, Any], what: str, surface: bool = False, log: bool = True):
    """One contour (or 3-D surface) per variant, on one shared colour scale, with θ0, θ_i, θ_j and the merge marked."""
    import numpy as np
    import plotly.graph_objects as go

    zs = {v: plane_values(p, what) for v, p in planes.items()}
    is_loss = what != "mean accuracy"
    if is_loss and log:
        zs = {v: np.log10(np.clip(z, 1e-4, None)) for v, z in zs.items()}
    zmin = float(min(np.nanmin(z) for z in zs.values()))
    zmax = float(max(np.nanmax(z) for z in zs.values()))
    title = ("log₁₀ " if is_loss and log else "") + what
    figs = {}
    for v, plane in planes.items():
        z = zs[v]
        colorscale = "Viridis" if is_loss else "Viridis_r"
        if surface:
            fig = go.Figure(go.Surface(x=plane.xs, y=plane.ys, z=z, cmin=zmin, cmax=zmax, colorscale=colorscale,
                                       colorbar=dict(title=title)))
            fig.update_layout(scene=dict(xaxis_title=plane.axes[0], yaxis_title=plane.axes[1], zaxis_title=title,
                                         zaxis=dict(range=[zmin, zmax])))
        else:
            fig = go.Figure(go.Contour(x=plane.xs, y=plane.ys, z=z, zmin=zmin, zmax=zmax, colorscale=colorscale,
                                       contours=dict(showlabels=False), colorbar=dict(title=title)))
            symbols = {"theta0": "circle", "origin": "circle", "task_i": "diamond", "task_j": "diamond",
                       "merge": "star"}
            for name, (x, y) in plane.markers.items():
                fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", text=[_marker_label(name, plane)],
                                         textposition="top center", showlegend=False,
                                         marker=dict(size=14 if name == "merge" else 11, color="white",
                                                     symbol=symbols.get(name, "x"), line=dict(color="black", width=1.5))))
            fig.update_layout(xaxis_title=plane.axes[0], yaxis_title=plane.axes[1])
        fig.update_layout(title=f"{variant_label(v)} fine-tuning", height=430, margin=dict(l=70, r=10, t=40, b=50))
        figs[v] = fig
    return figs


def _marker_label(name: str, plane) -> str:
    return {"theta0": "θ₀", "origin": "θ", "merge": "merge"}.get(name, name.replace("theta_", "θ_"))


def plane_sentence(planes: Mapping[str, Any]) -> str:
    """Compare the mean loss over the plane's [0,1]² square (where merges live) between variants."""
    import numpy as np

    vals = {}
    for v, p in planes.items():
        xs, ys = np.asarray(p.xs), np.asarray(p.ys)
        mx, my = (xs >= -1e-9) & (xs <= 1 + 1e-9), (ys >= -1e-9) & (ys <= 1 + 1e-9)
        z = plane_values(p, "mean loss")[np.ix_(my, mx)]
        vals[v] = float(np.mean(z))
    if not {"plain", "sam"} <= set(vals):
        return ""
    better = "SAM" if vals["sam"] < vals["plain"] else "plain"
    return (f"Mean loss of both tasks over the square 0 ≤ α_i, α_j ≤ 1 (where task-arithmetic merges lie): "
            f"plain {vals['plain']:.3f}, SAM {vals['sam']:.3f} — lower for **{better}** fine-tuning here.")


def matrix_figures(analysis: Mapping, kind: str):
    """Cosine-similarity or sign-conflict heatmaps per variant on one shared colour scale (diagonal masked)."""
    import numpy as np
    import plotly.graph_objects as go

    data = analysis["cosine" if kind == "cosine" else "sign_conflict"]
    mats = {}
    for v, d in data.items():
        m = np.array([[np.nan if x is None else x for x in row] for row in d["matrix"]], dtype=float)
        np.fill_diagonal(m, np.nan)
        mats[v] = (d["tasks"], m)
    off = np.concatenate([m[~np.isnan(m)] for _, m in mats.values()]) if mats else np.array([0.0])
    if kind == "cosine":
        r = float(max(1e-6, np.abs(off).max()))
        zmin, zmax, scale = -r, r, "RdBu_r"
    else:
        zmin, zmax, scale = float(min(off.min(), 0.5)), float(max(off.max(), 0.5)), "Oranges"
    figs = {}
    for v, (tasks, m) in mats.items():
        text = [["" if np.isnan(x) else (f"{x:.2f}" if kind == "cosine" else f"{x:.0%}") for x in row] for row in m]
        fig = go.Figure(go.Heatmap(z=m, x=tasks, y=tasks, zmin=zmin, zmax=zmax, colorscale=scale, text=text,
                                   texttemplate="%{text}", hoverongaps=False,
                                   colorbar=dict(title="cosine" if kind == "cosine" else "conflict")))
        fig.update_layout(title=f"{variant_label(v)} fine-tuning", height=420, margin=dict(l=110, r=10, t=40, b=90),
                          yaxis=dict(autorange="reversed"))
        figs[v] = fig
    return figs


def matrix_sentence(analysis: Mapping, kind: str) -> str:
    import numpy as np

    data = analysis["cosine" if kind == "cosine" else "sign_conflict"]
    means = {}
    for v, d in data.items():
        m = np.array([[np.nan if x is None else x for x in row] for row in d["matrix"]], dtype=float)
        np.fill_diagonal(m, np.nan)
        means[v] = float(np.nanmean(np.abs(m) if kind == "cosine" else m))
    if not {"plain", "sam"} <= set(means):
        return ""
    p, s = means["plain"], means["sam"]
    if kind == "cosine":
        lower = "SAM" if s < p else "plain"
        return (f"Mean |cosine| between different tasks' vectors: plain {p:.3f}, SAM {s:.3f} — closer to orthogonal "
                f"(less overlap) for **{lower}** fine-tuning.")
    lower = "SAM" if s < p else "plain"
    return (f"Mean share of weights where two task vectors disagree in sign (among weights both change): "
            f"plain {p:.1%}, SAM {s:.1%} — fewer conflicts for **{lower}** fine-tuning.")


def disentanglement_figures(results: Mapping[str, Any]):
    """ξ(α_1, α_2) heatmaps per variant on one shared colour scale (0 = perfectly disentangled)."""
    import numpy as np
    import plotly.graph_objects as go

    zmax = float(max(np.nanmax(np.asarray(r.xi)) for r in results.values())) if results else 1.0
    figs = {}
    for v, r in results.items():
        t1, t2 = r.tasks
        fig = go.Figure(go.Heatmap(x=r.alphas1, y=r.alphas2, z=np.asarray(r.xi).T, zmin=0, zmax=max(zmax, 1e-6),
                                   colorscale="Magma_r", colorbar=dict(title="ξ")))
        fig.update_layout(title=f"{variant_label(v)} fine-tuning — mean ξ = {r.mean:.3f}", height=420,
                          xaxis_title=f"α for {t1}", yaxis_title=f"α for {t2}", margin=dict(l=70, r=10, t=40, b=50))
        figs[v] = fig
    return figs


def disentanglement_sentence(results: Mapping[str, Any]) -> str:
    if not {"plain", "sam"} <= set(results):
        return ""
    p, s = results["plain"].mean, results["sam"].mean
    better = "SAM" if s < p else "plain"
    return (f"Mean disentanglement error ξ over the grid: plain {p:.3f}, SAM {s:.3f} — the merged model's predictions "
            f"stay closer to each task's own fine-tuned model for **{better}** fine-tuning.")


def disentanglement_from_analysis(analysis: Mapping, pair: Sequence[str]) -> dict[str, Any]:
    import numpy as np

    from sammerge.analytics.interference import Disentanglement

    out = {}
    for v, results in analysis.get("disentanglement", {}).items():
        for d in results:
            if list(d["tasks"]) == list(pair):
                out[v] = Disentanglement(np.asarray(d["alphas1"]), np.asarray(d["alphas2"]), np.asarray(d["xi"]),
                                         tuple(d["tasks"]))
    return out


def layer_norm_figure(analysis: Mapping, task: str | None = None):
    """Per-layer task-vector RMS (mean over tasks, or one task), plain vs SAM, layers in network order."""
    import plotly.graph_objects as go

    df = pd.DataFrame(analysis.get("layer_norms") or [])
    if df.empty:
        return None
    if task is not None:
        df = df[df["task"] == task]
    order = list(dict.fromkeys(df["layer"]))
    fig = go.Figure()
    variants = list(dict.fromkeys(df["variant"]))
    for v in variants:
        sub = df[df["variant"] == v].groupby("layer", sort=False)["rms"].mean().reindex(order)
        fig.add_trace(go.Scatter(x=order, y=sub.values, mode="lines+markers", name=variant_label(v),
                                 line=dict(color=variant_color(v, variants))))
    fig.update_layout(yaxis=dict(title="RMS of τ entries", type="log"), xaxis=dict(tickangle=-45),
                      height=380, margin=dict(l=70, r=10, t=30, b=120), legend=dict(orientation="h", y=1.12))
    return fig


def layer_norm_sentence(analysis: Mapping) -> str:
    df = pd.DataFrame(analysis.get("layer_norms") or [])
    if df.empty or not {"plain", "sam"} <= set(df["variant"]):
        return ""
    per = df.groupby(["layer", "variant"])["rms"].mean().unstack("variant")
    ratio = float(statistics.median((per["sam"] / per["plain"]).dropna().tolist()))
    bigger = int((per["sam"] > per["plain"]).sum())
    return (f"Median SAM/plain ratio of per-layer RMS change: {ratio:.2f}; SAM moved {bigger} of {len(per)} layers "
            f"further than plain fine-tuning did.")
