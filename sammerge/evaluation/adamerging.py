"""AdaMerging (Yang et al., ICLR 2024): merge coefficients learned by entropy minimization on unlabeled inputs.

θ(λ) = θ0 + Σ_t Σ_g λ_{t,g} τ'_{t,g}, where g runs over the layer groups of :mod:`sammerge.merging.layers`
(layer-wise) or over one group holding every key (task-wise), and τ'_t is the task vector τ_t (base
``task_arithmetic``) or its TIES part (base ``ties``, AdaMerging++: trim to ``density`` per tensor, elect
γ = sign Σ_t τ̂_t, keep the entries agreeing with γ; :func:`sammerge.merging.methods.ties_parts`).

The objective is the mean over tasks of the mean Shannon entropy H(p) = −Σ_c p_c log p_c of the merged encoder's
predictions (each task's frozen head) on ``images_per_task`` **unlabeled** images of the task's validation split
(a seeded random choice; labels are never read — the paper uses unlabeled test inputs). Adam on λ with a fixed step
budget, every step on the same images (deterministic), λ clamped to [clamp_low, clamp_high] after each step,
init λ = ``init`` (0.3 in the paper). The result is the evaluated point with the lowest entropy (the start
included), also when stopped early by ``should_stop()`` (then marked ``stopped``).

The output is a :class:`~sammerge.merging.MergeSpec` of ``task_arithmetic`` (λ = 1, no normalization) or ``ties``
(λ = 1, the same density, disjoint *sum*, ``vote="unweighted"``) whose per-task weights (task-wise) or per-layer
coefficients (layer-wise) are the learned λ — it exports, shares by URL and re-evaluates like a hand-set merge.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence

import torch
from torch.func import functional_call

from sammerge.data import unlabeled_images
from sammerge.errors import ConfigError
from sammerge.merging import MergeSpec, layers
from sammerge.merging.common import Density, ties_parts
from sammerge.merging.learners import coefficient_learner
from sammerge.merging.schema import Param
from sammerge.merging.task_vector import float_keys
from sammerge.progress import Progress

__all__ = ["AdaMergingResult", "adamerging", "learn_coefficients", "entropy", "unlabeled_images",
           "DATA_NOTE"]

DATA_NOTE = "unlabeled validation images (labels never read; the paper uses unlabeled test inputs)"
ALL = "all"  # the one group of task-wise AdaMerging


@dataclass
class AdaMergingResult:
    """Learned coefficients (task → group → λ), the spec that merges with them, and the entropy trace."""
    spec: MergeSpec
    coefficients: dict[str, dict[str, float]]
    groups: list[str]
    entropy: list[float]                      # mean entropy at step 0 (init), 1, …
    best_step: int
    seconds: float
    stopped: bool
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_run(self) -> int:
        return len(self.entropy) - 1

    def matrix(self) -> tuple[list[str], list[str], list[list[float]]]:
        """(tasks, groups, λ[task][group]) for heatmaps and tables."""
        tasks = list(self.coefficients)
        return tasks, list(self.groups), [[self.coefficients[t][g] for g in self.groups] for t in tasks]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) per row: −Σ_c p_c log p_c."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _check_settings(s: dict[str, Any]) -> None:
    if not s["clamp_low"] < s["clamp_high"]:
        raise ConfigError(f"parameter 'clamp_low' = {s['clamp_low']} must be below 'clamp_high' = {s['clamp_high']}")
    if not s["clamp_low"] <= s["init"] <= s["clamp_high"]:
        raise ConfigError(f"parameter 'init' = {s['init']} is outside [clamp_low, clamp_high] = "
                          f"[{s['clamp_low']}, {s['clamp_high']}]")


def learn_coefficients(pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                       encoder: torch.nn.Module, heads: Sequence, images: Sequence[torch.Tensor],
                       groups: Mapping[str, Sequence[str]], steps: int, lr: float, init: float,
                       clamp: tuple[float, float], progress: Progress | None = None,
                       should_stop: Callable[[], bool] | None = None, stage: str = "AdaMerging",
                       labels: Sequence[torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, list[float], int, bool]:
    """Adam on λ [T, G] minimizing mean_t mean_x H(head_t(f(x; θ0 + Σ_t Σ_g λ_{t,g} τ_{t,g}))).

    ``labels`` (a labelled proxy, for checks against a grid search): the cross-entropy with these labels replaces
    the prediction entropy; AdaMerging itself never sees labels.

    ``groups``: group → keys (every floating key in exactly one group); ``images[t]``/``heads[t]``: task t's inputs
    and head. τ is cached flattened per group ([T, n_g]), so a step is one mat-vec per group, one forward and one
    backward. Returns (λ with the lowest entropy, entropy trace, its step, stopped).
    """
    fkeys = float_keys(pretrained)
    grouped = [k for ks in groups.values() for k in ks]
    if sorted(grouped) != sorted(fkeys):
        raise ConfigError("AdaMerging: the layer groups must cover every floating key exactly once")
    T, G = len(task_vectors), len(groups)
    flat_base, flat_tv, shapes = [], [], []
    for ks in groups.values():
        flat_base.append(torch.cat([pretrained[k].float().reshape(-1) for k in ks]))
        flat_tv.append(torch.stack([torch.cat([tv[k].float().reshape(-1) for k in ks]) for tv in task_vectors]))
        shapes.append([(k, pretrained[k].shape, pretrained[k].numel()) for k in ks])
    fixed = {k: v for k, v in pretrained.items() if not v.is_floating_point()}
    # float buffers (a batch norm's running statistics) merge like the rest, but as constants of the step: torch's
    # batch norm refuses running statistics that require grad
    buffers = {name for name, _ in encoder.named_buffers()}
    x = torch.cat(list(images))
    bounds = torch.cumsum(torch.tensor([0] + [len(i) for i in images]), 0).tolist()
    encoder = encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    lam = torch.full((T, G), float(init), requires_grad=True)
    opt = torch.optim.Adam([lam], lr=lr)

    def loss_at(coef: torch.Tensor) -> torch.Tensor:
        params = dict(fixed)
        for g in range(G):
            merged = flat_base[g] + coef[:, g] @ flat_tv[g]
            offset = 0
            for key, shape, n in shapes[g]:
                value = merged[offset:offset + n].view(shape)
                params[key] = value.detach() if key in buffers else value
                offset += n
        feats = functional_call(encoder, params, (x,))
        if labels is not None:
            return torch.stack([torch.nn.functional.cross_entropy(heads[t](feats[bounds[t]:bounds[t + 1]]), labels[t])
                                for t in range(T)]).mean()
        return torch.stack([entropy(heads[t](feats[bounds[t]:bounds[t + 1]])).mean() for t in range(T)]).mean()

    trace: list[float] = []
    best, best_step, stopped = lam.detach().clone(), 0, False
    for step in range(steps + 1):
        loss = loss_at(lam)
        value = float(loss.detach())
        trace.append(value)
        if value < trace[best_step] or step == 0:
            best, best_step = lam.detach().clone(), step
        if progress:
            progress(step, steps, f"{stage}: entropy {value:.4f}")
        if step == steps:
            break
        if should_stop is not None and should_stop():
            stopped = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            lam.clamp_(clamp[0], clamp[1])
    return best, trace, best_step, stopped


Granularity = Annotated[Literal["task", "layer"], Param(
    label="granularity", help="'task': one λ per task; 'layer': one λ per task and layer group (stem, each block, "
                              "head side).")]
Base = Annotated[Literal["task_arithmetic", "ties"], Param(
    label="base", help="Learn λ over the task vectors (task arithmetic) or over their TIES parts (trim to density, "
                       "elect sign, disjoint parts: TIES-AdaMerging / AdaMerging++).")]


@coefficient_learner(
    name="adamerging", label="AdaMerging",
    description="Learn one λ per task (task-wise) or per task and layer group (layer-wise) by minimizing the entropy "
                "of the merged model's predictions on unlabeled inputs of each task; over task vectors or their "
                "TIES parts.",
    reference="https://arxiv.org/abs/2310.02575", validator=_check_settings)
def adamerging(zoo, variants: str | Mapping[str, str], tasks: Sequence[str] | None = None, *,
               granularity: Granularity = "task", base: Base = "task_arithmetic", density: Density = 0.2,
               steps: Annotated[int, Param(low=1, high=5000, ui_high=1000, step=10, label="steps",
                                           help="Adam steps (fixed budget).")] = 200,
               lr: Annotated[float, Param(low=0.0, low_exclusive=True, high=1.0, ui_low=0.001, ui_high=0.1,
                                          step=0.001, label="learning rate", help="Adam learning rate on λ.")] = 0.01,
               images_per_task: Annotated[int, Param(low=1, high=100000, ui_high=512, step=16,
                                                     label="images per task",
                                                     help="Unlabeled validation images per task (labels never "
                                                          "read).")] = 64,
               seed: Annotated[int, Param(low=0, high=2**31 - 1, ui_high=1000, step=1, label="seed",
                                          help="Seed of the choice of unlabeled images.")] = 0,
               init: Annotated[float, Param(low=-10.0, high=10.0, ui_low=0.0, ui_high=1.0, step=0.05,
                                            label="init λ", help="Starting coefficient (0.3 in the paper).")] = 0.3,
               clamp_low: Annotated[float, Param(low=-10.0, high=10.0, ui_low=-1.0, ui_high=1.0, step=0.05,
                                                 label="λ min", help="Lower clamp of every λ.")] = 0.0,
               clamp_high: Annotated[float, Param(low=-10.0, high=10.0, ui_low=0.0, ui_high=2.0, step=0.05,
                                                  label="λ max", help="Upper clamp of every λ.")] = 1.0,
               progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> AdaMergingResult:
    """AdaMerging on a zoo: λ_{t,g} minimizing the entropy on unlabeled validation images (see the module doc).

    ``variants``: one variant for every task or task → variant; ``tasks``: default every zoo task (or the keys of a
    ``variants`` mapping).
    """
    settings = dict(granularity=granularity, base=base, density=density, steps=steps, lr=lr,
                    images_per_task=images_per_task, seed=seed, init=init, clamp_low=clamp_low, clamp_high=clamp_high)
    _check_settings(settings)
    spec0 = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 1.0}, variants, tasks=tasks)  # task/variant checks
    names, chosen = spec0.task_names, spec0.variants
    theta0 = zoo.pretrained()
    tvs = [zoo.task_vector(t, chosen[t]) for t in names]
    if base == "ties":
        tvs = ties_parts(theta0, tvs, density)
    fkeys = float_keys(theta0)
    groups = layers.layer_groups(fkeys) if granularity == "layer" else {ALL: fkeys}
    images = [unlabeled_images(zoo, t, images_per_task, seed) for t in names]
    heads = [zoo.heads[t] for t in names]
    start = time.perf_counter()
    lam, trace, best_step, stopped = learn_coefficients(
        theta0, tvs, zoo.create_encoder(), heads, images, groups, steps, lr, init, (clamp_low, clamp_high),
        progress, should_stop, stage=f"AdaMerging ({granularity}-wise, {base})")
    seconds = time.perf_counter() - start
    coef = {t: {g: round(float(lam[i, j]), 6) for j, g in enumerate(groups)} for i, t in enumerate(names)}
    learned = {"learner": "adamerging", "settings": settings, "learned_on": dict(chosen),
               "data": f"{len(images[0])} {DATA_NOTE} per task",
               "entropy_start": trace[0], "entropy_best": trace[best_step], "best_step": best_step,
               "steps_run": len(trace) - 1, "stopped": stopped, "seconds": round(seconds, 3),
               "trace": [round(v, 6) for v in trace]}
    note = (f"AdaMerging ({granularity}-wise over {'TIES parts' if base == 'ties' else 'task vectors'}): λ learned by "
            f"minimizing prediction entropy on {len(images[0])} {DATA_NOTE} per task; entropy {trace[0]:.4f} → "
            f"{trace[best_step]:.4f} (step {best_step} of {len(trace) - 1}{', stopped early' if stopped else ''}); "
            f"{seconds:.1f} s")
    if base == "ties":
        method, params = "ties", {"lambda": 1.0, "density": density, "normalize": False, "vote": "unweighted",
                                  "trim_scope": "tensor"}
    else:
        method, params = "task_arithmetic", {"lambda": 1.0, "normalize": False}
    if granularity == "layer":
        spec = MergeSpec.for_zoo(zoo, method, params, chosen, tasks=names, layer_weights=coef, notes=note,
                                 learned=learned)
    else:
        spec = MergeSpec.for_zoo(zoo, method, params, chosen, tasks=names, weights={t: coef[t][ALL] for t in names},
                                 notes=note, learned=learned)
    return AdaMergingResult(spec, coef, list(groups), trace, best_step, seconds, stopped, settings)
