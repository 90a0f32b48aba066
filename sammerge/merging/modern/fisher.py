"""Fisher merging — parameters averaged with their diagonal Fisher information as weights (Matena & Raffel, 2022)."""
from __future__ import annotations

from typing import Annotated, Literal, Mapping

import torch
from torch.func import functional_call, jacrev, vmap

from sammerge.errors import ConfigError
from sammerge.merging.common import Weights
from sammerge.merging.modern._data import ImageSeed, ImageSplit, ImagesPerTask, batches, finetuned_encoder, task_images
from sammerge.merging.registry import Param, merge_direction
from sammerge.merging.task_vector import StateDict, float_keys
from sammerge.progress import report

__all__ = ["diagonal_fisher", "fisher_weights"]


def _log_probs(encoder, head, params, images):
    return torch.log_softmax(head(functional_call(encoder, params, (images,))), dim=-1)


def diagonal_fisher(zoo, task: str, variant: str, params: Mapping) -> dict[str, torch.Tensor]:
    """F_t[k], same shape as parameter k, of the fine-tuned model θ_t with its task head on unlabeled images; the
    labels are the model's own predictive distribution p = softmax(head(f(x; θ_t))).

    ``estimator="batch"`` (FusionBench 0.2.33): per batch B of ``batch_size`` images, g = ∇ Σ_{x∈B} Σ_y √p_y·log p_y
    (√p detached), F = Σ_B g² / n. ``"exact"``: F = (1/n) Σ_x Σ_y p_y (∇ log p_y(x))², the expected Fisher (one
    gradient per image and class: costs classes × parameters memory per image)."""
    encoder = finetuned_encoder(zoo, task, variant)
    device = next(encoder.parameters()).device
    head = zoo.heads[task].to(device)
    names = [n for n, p in encoder.named_parameters() if p.is_floating_point()]
    images = task_images(zoo, task, params)
    fisher = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in encoder.named_parameters() if n in names}
    parts = batches(images, int(params["batch_size"]) if params["estimator"] == "batch" else 8, device)
    buffers = dict(encoder.named_buffers()) if params["estimator"] == "exact" else {}
    weights = {n: p.detach() for n, p in encoder.named_parameters()} if params["estimator"] == "exact" else {}
    for i, batch in enumerate(parts):
        report(i, len(parts), f"Fisher information: {task}")
        if params["estimator"] == "batch":
            encoder.zero_grad(set_to_none=True)
            logp = torch.log_softmax(head(encoder(batch)), dim=-1)
            (logp.exp().sqrt().detach() * logp).sum().backward()
            for n, p in encoder.named_parameters():
                fisher[n] += p.grad.double() ** 2
            continue

        def one(image):  # ∇_θ log p_y(x) for every class y: {name: [C, *shape]}, and p(x)
            def logp_of(w):
                return _log_probs(encoder, head, {**w, **buffers}, image[None])[0]
            return jacrev(logp_of)(weights), logp_of(weights).exp()
        jac, probs = vmap(one)(batch)
        for n in names:
            g = jac[n].double()
            fisher[n] += torch.einsum("bc,bc...->...", probs.double(), g * g)
    report(len(parts), len(parts), f"Fisher information: {task}")
    return {n: (f / len(images)).float().cpu() for n, f in fisher.items()}


def fisher_weights(fishers: list[Mapping[str, torch.Tensor]], keys: list[str], scales: list[float],
                   normalize: bool, eps: float) -> list[float]:
    """c_t = s_t, or with ``normalize`` (FusionBench): c_t = s_t·r_t / Σ_u r_u with r_t = 1 / (‖F_t‖₂ + ε), ‖F_t‖₂
    over all of task t's Fisher entries (of ``keys``)."""
    if not normalize:
        return list(scales)
    norms = [float(torch.sqrt(sum(f[k].double().square().sum() for k in keys))) for f in fishers]
    r = [1.0 / (n + eps) for n in norms]
    return [s * x / sum(r) for s, x in zip(scales, r)]


Estimator = Annotated[Literal["batch", "exact"], Param(
    label="Fisher estimator", help="'batch': FusionBench's squared gradient of each batch's Σ √p·log p (default); "
                                   "'exact': the expected Fisher Σ_y p_y (∇ log p_y)² per image.")]


def _check_fisher(params: dict) -> None:
    """Every entry's weights c_t (F_t + ε) must have a positive sum: scales ≥ 0, not all 0 (ε > 0 by its range)."""
    weights = params.get("weights")
    if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
        raise ConfigError("fisher: the per-task weights must be ≥ 0 and not all 0 (each entry is a weighted mean)")


@merge_direction(name="fisher", label="Fisher merging",
                 description="Each parameter the weighted mean of the fine-tuned values, weighted by how much the "
                             "fine-tuned model's predictions on its own task's unlabeled images depend on it "
                             "(diagonal Fisher information); θ0 + λ τ.",
                 reference="https://arxiv.org/abs/2111.09832", lambda_range=(0.0, 2.0, 0.1),
                 data="unlabeled_images", statistics=diagonal_fisher, validator=_check_fisher)
def fisher(pretrained: StateDict, task_vectors: list[StateDict], statistics: list, weights: Weights = None,
           normalize: Annotated[bool, Param(label="normalize Fisher", help="Scale each task's Fisher by 1/‖F_t‖ "
                                            "(FusionBench's normalize_fisher_weight, default on).")] = True,
           minimal_fisher: Annotated[float, Param(low=0.0, high=1.0, low_exclusive=True, step=1e-6,
                                                  label="minimal Fisher ε",
                                                  help="Added to every Fisher entry, > 0 (default 1e-6).")] = 1e-6,
           estimator: Estimator = "batch",
           batch_size: Annotated[int, Param(low=1, high=4096, ui_high=256, step=1, label="batch size",
                                            help="Images per gradient of the 'batch' estimator (default 32).")] = 32,
           images_per_task: ImagesPerTask = 256, image_split: ImageSplit = "train",
           image_seed: ImageSeed = 0) -> StateDict:
    """Fisher merging: τ = Σ_t c_t (F_t + ε) τ_t / Σ_t c_t (F_t + ε) elementwise on every key with a Fisher
    (:func:`diagonal_fisher`, c_t from :func:`fisher_weights` with per-task weights s_t); other tensors
    τ = (1/T) Σ_t τ_t; θ = θ0 + λ τ (λ = 1 is Fisher merging).

    The weights of each entry sum to one, so θ0 + τ equals FusionBench 0.2.33's ``merging_with_fisher_weights`` of
    the fine-tuned weights θ_t.
    """
    keys = [k for k in float_keys(pretrained) if all(k in s for s in statistics)]
    scales = [1.0 if w is None else float(w) for w in (weights or [None] * len(task_vectors))]
    coef = fisher_weights(statistics, keys, scales, normalize, minimal_fisher)
    out: StateDict = {}
    for key in float_keys(pretrained):
        taus = torch.stack([tv[key].detach().double() for tv in task_vectors], 0)
        if key not in keys:
            out[key] = taus.mean(0).float()
            continue
        c = torch.tensor(coef, dtype=torch.float64).view(-1, *([1] * (taus.dim() - 1)))
        f = c * (torch.stack([s[key].double() for s in statistics], 0) + minimal_fisher)
        out[key] = ((f * taus).sum(0) / f.sum(0)).float()
    return out
