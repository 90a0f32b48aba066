"""Downloads: merged weights, model card, self-contained chart files (HTML; PNG with the optional kaleido extra)."""
from __future__ import annotations

from typing import Mapping

import torch

from sammerge.explorer.service import Comparison
from sammerge.merging import MergeSpec
from sammerge.merging.schema import fmt
from sammerge.merging.spec import library_version


def figure_html(fig) -> str:
    """A self-contained HTML file of a plotly figure (plotly.js inlined: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def png_available() -> bool:
    """Server-side PNG export needs the optional ``kaleido`` (≥ 1, drives the system Chromium; works offline)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


def figure_png(fig, scale: float = 2.0) -> bytes:
    """A PNG of a plotly figure (requires kaleido; see :func:`png_available`)."""
    return fig.to_image(format="png", scale=scale)


def weights_bytes(merged: Mapping[str, torch.Tensor], spec: MergeSpec) -> bytes:
    """The merged encoder as safetensors bytes, with the spec in the metadata (``sammerge_config``)."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous() for k, v in merged.items()}
    return save(tensors, metadata={"format": "pt", "sammerge_config": spec.to_json(),
                                   "sammerge_version": library_version()})


def model_card(cmp: Comparison, zoo) -> str:
    """A Markdown model card: method, parameters, the models merged (files, sha256) and measured accuracy."""
    spec, summ = cmp.spec, cmp.summary()
    method = spec.spec
    individual = cmp.individual_for()
    m = zoo.manifest
    lines = [f"# Merged encoder — {method.label}", "",
             f"Made with sammerge {library_version()} from the zoo `{zoo.path}` "
             f"({m.describe()}).", "",
             f"**Method**: `{method.name}` — {method.description}", ""]
    if spec.params:
        lines += ["**Parameters**: " + ", ".join(f"`{k}` = {fmt(v)}" for k, v in spec.params.items()), ""]
    lines += ["**Base model**: the pretrained encoder θ₀ "
              f"(`{m.pretrained.file}`, sha256 `{m.pretrained.sha256[:16]}…`).", "",
              "## Models merged", "", "| task | fine-tuning | coefficient λ_t | checkpoint | sha256 |",
              "|---|---|---|---|---|"]
    for t in spec.tasks:
        rec = m.checkpoint(t.task, t.variant)
        lines.append(f"| {t.task} | {rec.method.get('label', t.variant)} | {fmt(t.weight)} | `{rec.file}` | "
                     f"`{rec.sha256[:16]}…` |")
    lines += ["", f"## Accuracy ({cmp.evaluation})", "",
              "| task | merged | individual fine-tuned | normalized |", "|---|---|---|---|"]
    cur = cmp.results["current"]
    for t in spec.task_names:
        lines.append(f"| {t} | {cur[t].accuracy:.1%} | {individual[t].accuracy:.1%} | "
                     f"{summ.per_task_normalized[t]:.1%} |")
    lines += [f"| **mean** | **{summ.mean:.1%}** | | **{summ.normalized:.1%}** |", "",
              "Heads: each task keeps its frozen linear head from the zoo (`heads.safetensors`); this file holds "
              "the encoder only. The exact recipe is in the accompanying `merge_config.json` and in the "
              "safetensors metadata (`sammerge_config`).", ""]
    return "\n".join(lines)
