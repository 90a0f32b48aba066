"""Per-layer coefficients in the explorer: the λ grid (task × layer group), heatmaps, learned AdaMerging results.

No Streamlit here: the page arranges these calls. Learned results are kept per server in :data:`LEARNED`
(keyed by zoo, variant and settings), so every visitor sees them and the paper-table page can reuse them.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Mapping, Sequence

import pandas as pd

from sammerge.explorer.style import variant_label
from sammerge.merging import MergeSpec, layers

__all__ = ["LearnedStore", "LEARNED", "group_names_of", "coefficient_grid", "uniform_grid", "spec_from_grid",
           "coefficient_heatmaps", "entropy_figure", "learned_sentence"]

DEFAULT_GRID_VALUE = 0.3


class LearnedStore:
    """AdaMerging results of this server: (zoo path, variant, settings) → result. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple[str, str, str], Any] = {}

    @staticmethod
    def key(zoo, variant: str, settings: Mapping[str, Any]) -> tuple[str, str, str]:
        return str(zoo.path.absolute()), variant, json.dumps(dict(settings), sort_keys=True)

    def get(self, zoo, variant: str, settings: Mapping[str, Any]):
        with self._lock:
            return self._results.get(self.key(zoo, variant, settings))

    def put(self, zoo, variant: str, settings: Mapping[str, Any], result) -> None:
        with self._lock:
            self._results[self.key(zoo, variant, settings)] = result


LEARNED = LearnedStore()


def group_names_of(zoo) -> list[str]:
    """The layer groups of the zoo's encoder (stem, each block, head side)."""
    return layers.group_names(k for k, v in zoo.pretrained().items() if v.is_floating_point())


def uniform_grid(tasks: Sequence[str], groups: Sequence[str], value: float = DEFAULT_GRID_VALUE) -> pd.DataFrame:
    """A task × group frame with one value everywhere (the editor's neutral start: task arithmetic at λ)."""
    return pd.DataFrame([[float(value)] * len(groups) for _ in tasks], index=list(tasks), columns=list(groups))


def coefficient_grid(spec: MergeSpec, groups: Sequence[str]) -> pd.DataFrame:
    """Effective coefficient λ · λ_t · s_{t,g} of every task of ``spec`` on every group (task × group frame)."""
    return pd.DataFrame([[spec.coefficient(t, g) for g in groups] for t in spec.task_names],
                        index=spec.task_names, columns=list(groups))


def spec_from_grid(zoo, grid: pd.DataFrame, variants: str | Mapping[str, str], **provenance) -> MergeSpec:
    """Task arithmetic θ0 + Σ_t Σ_g λ_{t,g} τ_{t,g} with λ = 1, λ_t = 1 and s_{t,g} = grid[t][g] (one validated spec)."""
    lw = {str(t): {str(g): float(grid.loc[t, g]) for g in grid.columns} for t in grid.index}
    return MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 1.0, "normalize": False}, variants,
                             tasks=list(grid.index), layer_weights=lw, **provenance)


def coefficient_heatmaps(grids: Mapping[str, pd.DataFrame], zmin: float = 0.0, zmax: float = 1.0):
    """Heatmaps of λ (task rows × layer-group columns), one panel per variant, one shared colour scale."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(grids)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[variant_label(n) if n in ("plain", "sam", "asam")
                                                                 else n for n in names], horizontal_spacing=0.05)
    for i, name in enumerate(names, start=1):
        grid = grids[name]
        fig.add_trace(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index), zmin=zmin, zmax=zmax,
                                 colorscale="Viridis", showscale=(i == len(names)), colorbar=dict(title="λ"),
                                 text=[[f"{v:.2f}" for v in row] for row in grid.values], texttemplate="%{text}",
                                 hovertemplate="task %{y}<br>group %{x}<br>λ = %{z:.3f}<extra>" + name + "</extra>"),
                      row=1, col=i)
        fig.update_yaxes(autorange="reversed", showticklabels=(i == 1), row=1, col=i)  # same tasks in every panel
    height = 160 + 34 * max(len(g.index) for g in grids.values())
    fig.update_xaxes(automargin=True, tickangle=-30, title_text="layer group")
    fig.update_yaxes(automargin=True)
    fig.update_layout(height=height, margin=dict(l=110, r=10, t=40, b=70))
    return fig


def entropy_figure(traces: Mapping[str, Sequence[float]], held_out: Mapping[str, Sequence[float]] | None = None,
                   chosen: Mapping[str, int] | None = None):
    """Mean prediction entropy (AdaMerging's objective) per step, one line per variant; dashed: the same on the
    held-out images where there are some; a marker on each variant's returned step."""
    import plotly.graph_objects as go

    from sammerge.explorer.style import variant_color

    fig = go.Figure()
    held_out, chosen = held_out or {}, chosen or {}
    for name, trace in traces.items():
        color = variant_color(name, list(traces))
        fig.add_scatter(x=list(range(len(trace))), y=list(trace), mode="lines", name=variant_label(name),
                        line=dict(color=color))
        held = held_out.get(name)
        if held:
            fig.add_scatter(x=list(range(len(held))), y=list(held), mode="lines",
                            name=f"{variant_label(name)}, held-out", line=dict(color=color, dash="dash"))
        if name in chosen:
            step = chosen[name]
            fig.add_scatter(x=[step], y=[(held or trace)[step]], mode="markers", showlegend=False,
                            marker=dict(color=color, size=9, symbol="diamond"),
                            hovertemplate=f"{variant_label(name)}: returned step {step}<extra></extra>")
    fig.update_layout(xaxis_title="Adam step", yaxis_title="mean entropy (nats)", height=300,
                      margin=dict(l=60, r=10, t=20, b=40), legend=dict(orientation="h", y=1.1))
    return fig


def learned_sentence(results: Mapping[str, Any]) -> str:
    """What the learned coefficients say, per variant: mean λ, the range, and the entropy drop."""
    parts = []
    for v, r in results.items():
        values = [x for row in r.coefficients.values() for x in row.values()]
        parts.append(f"{variant_label(v)}: mean λ {sum(values) / len(values):.2f} (range {min(values):.2f}–"
                     f"{max(values):.2f}), entropy {r.entropy[0]:.3f} → {r.entropy[r.best_step]:.3f} at step "
                     f"{r.best_step} of {r.steps_run}"
                     + (f" (held-out {r.holdout_entropy[0]:.3f} → {r.holdout_entropy[r.best_step]:.3f})"
                        if r.holdout_entropy else "")
                     + f" ({r.seconds:.0f} s{', stopped early' if r.stopped else ''})")
    return "; ".join(parts) + "."
