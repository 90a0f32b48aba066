"""Interference diagnostics between task vectors: cosine and sign-conflict matrices, per-layer norms,
weight-disentanglement error (Ortiz-Jimenez et al. 2023) and cross-task linearity (Zhou et al. 2024).

All take plain state dicts, so plain and SAM task vectors go through exactly the same code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from sammerge.progress import Progress  # progress(done, total, stage)
from sammerge.errors import ConfigError
from sammerge.merging.task_vector import linear_combination

Params = Mapping[str, torch.Tensor]


def flatten(tv: Params, keys: Sequence[str] | None = None) -> torch.Tensor:
    """All floating tensors of a state dict concatenated (sorted keys unless ``keys`` given), float64."""
    keys = sorted(k for k, v in tv.items() if v.is_floating_point()) if keys is None else keys
    return torch.cat([tv[k].detach().reshape(-1).to(torch.float64) for k in keys])


def _flat_all(task_vectors: Mapping[str, Params]) -> tuple[list[str], list[torch.Tensor]]:
    if not task_vectors:
        raise ConfigError("interference: no task vectors")
    names = list(task_vectors)
    first = task_vectors[names[0]]
    keys = sorted(k for k, v in first.items() if v.is_floating_point())
    for n in names[1:]:
        if sorted(k for k, v in task_vectors[n].items() if v.is_floating_point()) != keys:
            raise ConfigError(f"interference: task vector '{n}' has different keys than '{names[0]}'")
    return names, [flatten(task_vectors[n], keys) for n in names]


def cosine_matrix(task_vectors: Mapping[str, Params]) -> tuple[list[str], np.ndarray]:
    """(names, C) with C[a, b] = cos(τ_a, τ_b) over all floating entries (0 for a zero vector off the diagonal)."""
    names, flats = _flat_all(task_vectors)
    X = torch.stack(flats)
    norms = X.norm(dim=1)
    C = (X @ X.T) / torch.outer(norms, norms).clamp_min(1e-300)
    C = C.numpy()
    C = (C + C.T) / 2
    np.fill_diagonal(C, 1.0)
    return names, C


def sign_conflict_matrix(task_vectors: Mapping[str, Params]) -> tuple[list[str], np.ndarray]:
    """(names, S): S[a, b] = fraction of entries, among those non-zero in both τ_a and τ_b, with opposite
    signs (NaN if none is non-zero in both; the diagonal is 0)."""
    names, flats = _flat_all(task_vectors)
    signs = [torch.sign(f) for f in flats]
    n = len(names)
    S = np.zeros((n, n))
    for a in range(n):
        for b in range(a + 1, n):
            both = (signs[a] != 0) & (signs[b] != 0)
            count = int(both.sum())
            value = float((signs[a][both] != signs[b][both]).sum()) / count if count else float("nan")
            S[a, b] = S[b, a] = value
    return names, S


def layer_norms(task_vectors: Mapping[tuple[str, str], Params]):
    """Per-key L2 norms: DataFrame with columns layer, task, variant, norm, numel, rel_norm
    (norm / sqrt(numel), the RMS entry). ``task_vectors`` maps (task, variant) → τ."""
    import pandas as pd

    rows = []
    for (task, variant), tv in task_vectors.items():
        for key, value in tv.items():
            if not value.is_floating_point():
                continue
            norm = float(value.detach().double().norm())
            rows.append({"layer": key, "task": task, "variant": variant, "norm": norm, "numel": value.numel(),
                         "rms": norm / max(value.numel(), 1) ** 0.5})
    return pd.DataFrame(rows, columns=["layer", "task", "variant", "norm", "numel", "rms"])


# -- batched predictions ----------------------------------------------------------------------------------
def batched_predictions(evaluator, params_list: Sequence[Params], chunk: int = 4) -> list[dict[str, torch.Tensor]]:
    """Predicted labels per task for many parameter settings, ``chunk`` at a time under ``vmap``
    (same data and heads as ``evaluator``)."""
    out: list[dict[str, torch.Tensor]] = []
    encoder, images = evaluator.encoder, evaluator.images
    with torch.inference_mode():
        for start in range(0, len(params_list), chunk):
            part = params_list[start:start + chunk]
            stacked = {k: torch.stack([p[k] for p in part]).to(evaluator.device) for k in part[0]}
            feats = vmap(lambda p: functional_call(encoder, p, (images,)))(stacked)
            evaluator.forward_count += len(part)
            for f in feats:
                out.append({t: evaluator.heads[t](f[evaluator.slices[t]]).argmax(1).cpu() for t in evaluator.tasks})
    return out


@dataclass
class Disentanglement:
    alphas1: np.ndarray
    alphas2: np.ndarray
    xi: np.ndarray          # [len(alphas1), len(alphas2)], each entry in [0, 2]
    tasks: tuple[str, str]

    @property
    def mean(self) -> float:
        return float(self.xi.mean())

    def to_json(self) -> dict:
        return {"tasks": list(self.tasks), "alphas1": self.alphas1.tolist(), "alphas2": self.alphas2.tolist(),
                "xi": self.xi.tolist(), "mean": self.mean}


def disentanglement_error(evaluator, theta0: Params, tau1: Params, tau2: Params, tasks: tuple[str, str],
                          alphas1: Sequence[float] | None = None, alphas2: Sequence[float] | None = None,
                          progress: Progress | None = None, chunk: int = 4) -> Disentanglement:
    """ξ(α1, α2) = Σ_{t∈{1,2}} E_{x∼D_t}[1{f_t(x; θ0 + α_t τ_t) ≠ f_t(x; θ0 + α1 τ1 + α2 τ2)}] on the grid
    (default 11×11 on [0, 1.5]²). ``evaluator`` holds D_1 and D_2 (its tasks must include ``tasks``);
    f_t uses task t's head."""
    t1, t2 = tasks
    for t in tasks:
        if t not in evaluator.tasks:
            raise ConfigError(f"disentanglement: evaluator has no task '{t}' (has: {', '.join(evaluator.tasks)})")
    a1 = np.linspace(0, 1.5, 11) if alphas1 is None else np.asarray(alphas1, float)
    a2 = np.linspace(0, 1.5, 11) if alphas2 is None else np.asarray(alphas2, float)
    total = len(a1) + len(a2) + len(a1) * len(a2)
    done = 0

    def tick(n):
        nonlocal done
        done += n
        if progress:
            progress(done, total, "disentanglement")

    if progress:
        progress(0, total, "disentanglement")
    single1, single2 = [], []
    for alphas, tau, sink, task in ((a1, tau1, single1, t1), (a2, tau2, single2, t2)):
        for start in range(0, len(alphas), chunk):
            settings = [linear_combination(theta0, [tau], [a], validate=False) for a in alphas[start:start + chunk]]
            sink.extend(p[task] for p in batched_predictions(evaluator, settings, chunk))
            tick(len(settings))
    xi = np.zeros((len(a1), len(a2)))
    points = [(i, j) for i in range(len(a1)) for j in range(len(a2))]
    for start in range(0, len(points), chunk):
        part = points[start:start + chunk]
        settings = [linear_combination(theta0, [tau1, tau2], [a1[i], a2[j]], validate=False) for i, j in part]
        for (i, j), pred in zip(part, batched_predictions(evaluator, settings, chunk)):
            xi[i, j] = (float((pred[t1] != single1[i]).float().mean())
                        + float((pred[t2] != single2[j]).float().mean()))
        tick(len(part))
    return Disentanglement(a1, a2, xi, (t1, t2))


# -- cross-task linearity ---------------------------------------------------------------------------------
DEFAULT_BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4")


def _block_modules(encoder: nn.Module, blocks: Sequence[str]) -> dict[str, nn.Module]:
    mods = {}
    for b in blocks:
        name = "act1" if b == "stem" else b
        try:
            mods[b] = encoder.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"cross-task linearity: encoder has no block '{b}'") from None
    return mods


def block_features(encoder: nn.Module, params: Params, images: torch.Tensor,
                   blocks: Sequence[str] = DEFAULT_BLOCKS) -> dict[str, torch.Tensor]:
    """Output of each block (stem = after conv1/norm/act; layerK = output of that stage) for ``params``."""
    feats: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in _block_modules(encoder, blocks).items():
        handles.append(mod.register_forward_hook(lambda _m, _i, out, name=name: feats.__setitem__(name, out)))
    try:
        with torch.inference_mode():
            functional_call(encoder.eval(), dict(params), (images,))
    finally:
        for h in handles:
            h.remove()
    return feats


def cross_task_linearity(encoder: nn.Module, theta_i: Params, theta_j: Params, images: torch.Tensor,
                         alphas: Sequence[float] | None = None,
                         blocks: Sequence[str] = DEFAULT_BLOCKS) -> dict[str, np.ndarray]:
    """Zhou et al. 2024: for θ_α = α θ_i + (1−α) θ_j, per block ℓ the mean over inputs of
    1 − cos(f^ℓ(x; θ_α), α f^ℓ(x; θ_i) + (1−α) f^ℓ(x; θ_j)) (cosine over each input's flattened block
    output). Returns block → array over ``alphas`` (default 0, 0.1, …, 1; 0 at the end points)."""
    alphas = np.linspace(0, 1, 11) if alphas is None else np.asarray(alphas, float)
    fi = block_features(encoder, theta_i, images, blocks)
    fj = block_features(encoder, theta_j, images, blocks)
    out = {b: np.zeros(len(alphas)) for b in blocks}
    for n, a in enumerate(alphas):
        mixed = {k: (a * theta_i[k] + (1 - a) * theta_j[k]) if theta_i[k].is_floating_point() else theta_i[k]
                 for k in theta_i}
        fa = block_features(encoder, mixed, images, blocks)
        for b in blocks:
            lin = a * fi[b] + (1 - a) * fj[b]
            cos = torch.nn.functional.cosine_similarity(fa[b].flatten(1), lin.flatten(1), dim=1, eps=1e-12)
            out[b][n] = float((1 - cos).mean())
    return out
