"""AdaMerging (Yang et al., ICLR 2024): merge coefficients learned by entropy minimization on unlabeled inputs.

θ(λ) = θ0 + Σ_t Σ_g λ_{t,g} τ'_{t,g}, where g runs over the layer groups of :mod:`sammerge.merging.layers`
(layer-wise) or over one group holding every key (task-wise), and τ'_t is the task vector τ_t (base
``task_arithmetic``) or its TIES part (base ``ties``, AdaMerging++: trim to ``density`` per tensor, elect
γ = sign Σ_t τ̂_t, keep the entries agreeing with γ; :func:`sammerge.merging.methods.ties_parts`).

The objective is the mean over tasks of the mean Shannon entropy H(p) = −Σ_c p_c log p_c of the merged encoder's
predictions (each task's frozen head) on ``images_per_task`` **unlabeled** images of the task's validation split
(a seeded random choice; labels are never read — the paper uses unlabeled test inputs). Adam on λ with a fixed step
budget, every step on the same images (deterministic), λ clamped to [clamp_low, clamp_high] after each step,
init λ = ``init`` (0.3 in the paper). The result is the evaluated point with the lowest objective (the start
included), also when stopped early by ``should_stop()`` (then marked ``stopped``).

Two optional restraints (both off by default, which is the paper's AdaMerging):
- ``prior_weight`` μ: the objective becomes H + μ · mean_{t,g} (λ_{t,g} − init)², a pull toward the start (e.g. the
  λ task arithmetic chose), so λ leaves it only where the entropy gains enough;
- ``holdout_per_task``: that many further unlabeled images per task, disjoint from the fitted ones, are scored at
  every step and choose the returned step (the lowest held-out objective): early stopping without labels.

The output is a :class:`~sammerge.merging.MergeSpec` of ``task_arithmetic`` (λ = 1, no normalization) or ``ties``
(λ = 1, the same density, disjoint *sum*, ``vote="unweighted"``) whose per-task weights (task-wise) or per-layer
coefficients (layer-wise) are the learned λ — it exports, shares by URL and re-evaluates like a hand-set merge.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Mapping, NamedTuple, Sequence

import torch
from torch.func import functional_call

from sammerge.data import unlabeled_draw, unlabeled_images
from sammerge.errors import ConfigError
from sammerge.merging import MergeSpec, layers
from sammerge.merging.common import Density, ties_parts
from sammerge.merging.learners import coefficient_learner
from sammerge.merging.schema import Param
from sammerge.merging.task_vector import float_keys
from sammerge.progress import Progress

__all__ = ["AdaMergingResult", "LearnedCoefficients", "adamerging", "learn_coefficients", "entropy",
           "unlabeled_images", "DATA_NOTE"]

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
    holdout_entropy: list[float] = field(default_factory=list)  # mean entropy on the held-out images, per step

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


class LearnedCoefficients(NamedTuple):
    """What :func:`learn_coefficients` found: λ [T, G] of the chosen step, the mean entropy on the fitted images at
    every evaluated step (the start is step 0), the chosen step, whether ``should_stop`` ended it, and the mean
    entropy on the held-out images per step (empty without a holdout)."""
    lam: torch.Tensor
    entropy: list[float]
    best_step: int
    stopped: bool
    holdout_entropy: list[float]


def learn_coefficients(pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                       encoder: torch.nn.Module, heads: Sequence, images: Sequence[torch.Tensor],
                       groups: Mapping[str, Sequence[str]], steps: int, lr: float, init: float,
                       clamp: tuple[float, float], progress: Progress | None = None,
                       should_stop: Callable[[], bool] | None = None, stage: str = "AdaMerging",
                       labels: Sequence[torch.Tensor] | None = None, prior_weight: float = 0.0,
                       holdout: Sequence[torch.Tensor] | None = None) -> LearnedCoefficients:
    """Adam on λ [T, G] minimizing mean_t mean_x H(head_t(f(x; θ0 + Σ_t Σ_g λ_{t,g} τ_{t,g})))
    + prior_weight · mean (λ − init)².

    ``labels`` (a labelled proxy, for checks against a grid search): the cross-entropy with these labels replaces
    the prediction entropy; AdaMerging itself never sees labels. ``holdout[t]``: task t's held-out unlabeled images;
    when given, the returned step is the one with the lowest held-out objective (else the lowest fitted one).

    ``groups``: group → keys (every floating key in exactly one group); ``images[t]``/``heads[t]``: task t's inputs
    and head. τ is cached flattened per group ([T, n_g]), so a step is one mat-vec per group, one forward and one
    backward (and one more forward with a holdout).
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

    def batch(per_task: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        return (torch.cat(list(per_task)),
                torch.cumsum(torch.tensor([0] + [len(i) for i in per_task]), 0).tolist())
    fit_x, fit_bounds = batch(images)
    held = batch(holdout) if holdout is not None else None
    encoder = encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    lam = torch.full((T, G), float(init), requires_grad=True)
    opt = torch.optim.Adam([lam], lr=lr)

    def entropy_at(coef: torch.Tensor, x: torch.Tensor, bounds: list[int],
                   targets: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        params = dict(fixed)
        for g in range(G):
            merged = flat_base[g] + coef[:, g] @ flat_tv[g]
            offset = 0
            for key, shape, n in shapes[g]:
                value = merged[offset:offset + n].view(shape)
                params[key] = value.detach() if key in buffers else value
                offset += n
        feats = functional_call(encoder, params, (x,))
        if targets is not None:
            return torch.stack([torch.nn.functional.cross_entropy(heads[t](feats[bounds[t]:bounds[t + 1]]), targets[t])
                                for t in range(T)]).mean()
        return torch.stack([entropy(heads[t](feats[bounds[t]:bounds[t + 1]])).mean() for t in range(T)]).mean()

    def penalty(coef: torch.Tensor) -> torch.Tensor:
        return prior_weight * ((coef - float(init)) ** 2).mean()

    trace: list[float] = []
    held_trace: list[float] = []
    chosen: list[float] = []  # the objective that picks the returned step
    best, best_step, stopped = lam.detach().clone(), 0, False
    for step in range(steps + 1):
        fit_entropy = entropy_at(lam, fit_x, fit_bounds, labels)
        loss = fit_entropy + penalty(lam) if prior_weight else fit_entropy
        trace.append(float(fit_entropy.detach()))
        if held is not None:
            with torch.no_grad():
                held_trace.append(float(entropy_at(lam, *held)))
            chosen.append(held_trace[-1] + float(penalty(lam.detach())))
        else:
            chosen.append(float(loss.detach()))
        if chosen[-1] < chosen[best_step] or step == 0:
            best, best_step = lam.detach().clone(), step
        if progress:
            progress(step, steps, f"{stage}: entropy {trace[-1]:.4f}"
                     + (f", held-out {held_trace[-1]:.4f}" if held_trace else ""))
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
    return LearnedCoefficients(best, trace, best_step, stopped, held_trace)


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
               prior_weight: Annotated[float, Param(low=0.0, high=1000.0, ui_high=10.0, step=0.1,
                                                    label="pull toward init λ",
                                                    help="μ of the penalty μ · mean (λ − init)² added to the entropy; "
                                                         "0: none (the paper).")] = 0.0,
               holdout_per_task: Annotated[int, Param(low=0, high=100000, ui_high=512, step=16,
                                                      label="held-out images per task",
                                                      help="Further unlabeled images, disjoint from the fitted ones, "
                                                           "whose entropy picks the returned step (early stopping "
                                                           "without labels); 0: none.")] = 0,
               progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> AdaMergingResult:
    """AdaMerging on a zoo: λ_{t,g} minimizing the entropy on unlabeled validation images (see the module doc).

    ``variants``: one variant for every task or task → variant; ``tasks``: default every zoo task (or the keys of a
    ``variants`` mapping).
    """
    settings = dict(granularity=granularity, base=base, density=density, steps=steps, lr=lr,
                    images_per_task=images_per_task, seed=seed, init=init, clamp_low=clamp_low, clamp_high=clamp_high,
                    prior_weight=prior_weight, holdout_per_task=holdout_per_task)
    _check_settings(settings)
    spec0 = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 1.0}, variants, tasks=tasks)  # task/variant checks
    names, chosen = spec0.task_names, spec0.variants
    theta0 = zoo.pretrained()
    tvs = [zoo.task_vector(t, chosen[t]) for t in names]
    if base == "ties":
        tvs = ties_parts(theta0, tvs, density)
    fkeys = float_keys(theta0)
    groups = layers.layer_groups(fkeys) if granularity == "layer" else {ALL: fkeys}
    draws = [unlabeled_draw(zoo, t, images_per_task, holdout_per_task, seed) for t in names]
    images = [fit for fit, _ in draws]
    heads = [zoo.heads[t] for t in names]
    start = time.perf_counter()
    lam, trace, best_step, stopped, held = learn_coefficients(
        theta0, tvs, zoo.create_encoder(), heads, images, groups, steps, lr, init, (clamp_low, clamp_high),
        progress, should_stop, stage=f"AdaMerging ({granularity}-wise, {base})", prior_weight=prior_weight,
        holdout=[h for _, h in draws] if holdout_per_task else None)
    seconds = time.perf_counter() - start
    coef = {t: {g: round(float(lam[i, j]), 6) for j, g in enumerate(groups)} for i, t in enumerate(names)}
    learned = {"learner": "adamerging", "settings": settings, "learned_on": dict(chosen),
               "data": f"{len(images[0])} {DATA_NOTE} per task",
               "entropy_start": trace[0], "entropy_best": trace[best_step], "best_step": best_step,
               "steps_run": len(trace) - 1, "stopped": stopped, "seconds": round(seconds, 3),
               "trace": [round(v, 6) for v in trace]}
    if held:
        learned["holdout_trace"] = [round(v, 6) for v in held]
    restraints = "".join([f"; pull μ = {prior_weight:g} toward λ = {init:g}" if prior_weight else "",
                          f"; step chosen on {len(draws[0][1])} held-out images per task" if held else ""])
    note = (f"AdaMerging ({granularity}-wise over {'TIES parts' if base == 'ties' else 'task vectors'}): λ learned by "
            f"minimizing prediction entropy on {len(images[0])} {DATA_NOTE} per task; entropy {trace[0]:.4f} → "
            f"{trace[best_step]:.4f} (step {best_step} of {len(trace) - 1}{', stopped early' if stopped else ''}){restraints}; "
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
    return AdaMergingResult(spec, coef, list(groups), trace, best_step, seconds, stopped, settings, held)
