"""A linearized zoo's instant preview, precomputed once per zoo and evaluation subset and kept on disk.

The preview (:mod:`sammerge.evaluation.linear_preview`) scores a merge θ0 + Σ_t c_t τ_t of a linearized zoo as

    f_lin(x; θ) = f(x; θ0) + Σ_t c_t (J τ_t)(x),

so f(x; θ0) and one J τ_t per checkpoint (task × variant) on the evaluation images are all it needs. They are
computed once (:func:`precompute_preview`: one forward and one J·τ per checkpoint, by reverse mode so that the job
may run beside the explorer's forward-mode AD) and stored in
``ZOO/analysis/cache/linear_preview-{key}.safetensors`` — tensors ``base`` [N, D], ``jvp/{task}/{variant}``
[N, D] and the evaluation ``labels`` [N] — written atomically (a failed, cancelled or killed computation leaves no
file). ``key`` hashes everything the numbers depend on: the zoo's file hashes (θ0, heads, every checkpoint,
imported images), its encoder, tasks and variants, the evaluation subset (split, images per task, seed) and the
code version; an entry for another key is never read.

In the app the computation is one job of the server's shared worker per zoo and subset
(:func:`submit_preview_job`; a second request gets the same job); :class:`InstantPreview` is the explorer's handle:
the preview once it is on disk, None (evaluate exactly) while the job runs. ``sammerge preview ZOO`` precomputes
it from the command line.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sammerge import __version__
from sammerge.errors import CheckpointError, ConfigError, ZooError
from sammerge.evaluation.evaluator import Evaluator
from sammerge.evaluation.linear_preview import LinearPreview
from sammerge.evaluation.subset import EXPLORER_SUBSET, EvalSubset
from sammerge.cache import analysis_dir
from sammerge.io import load_state_dict, read_metadata, save_state_dict
from sammerge.merging.spec import task_id
from sammerge.progress import Progress

PREVIEW_FORMAT = 1
KIND = "linear_preview"


@dataclass(frozen=True)
class PreviewTensors:
    """f(x; θ0) [N, D], J τ [N, D] per ``task/variant`` and the labels [N] of the evaluation images, in order."""
    base: torch.Tensor
    jvps: dict[str, torch.Tensor]
    labels: torch.Tensor


def _require_linearized(zoo) -> None:
    if not zoo.manifest.linearized:
        raise ConfigError(f"{zoo.path}: not a linearized zoo (recipe finetune.linearized); the instant preview "
                          "f(θ0) + Σ c J τ is exact only for linearized checkpoints")


def preview_key(zoo, subset: EvalSubset) -> str:
    """sha256 of everything the precomputed tensors depend on (zoo file hashes, encoder, tasks, variants, subset,
    format and library version)."""
    payload = {"kind": KIND, "format": PREVIEW_FORMAT, "library": __version__, "zoo": zoo.checkpoint_hashes(),
               "encoder": zoo.encoder_config.model_dump(mode="json"), "tasks": zoo.tasks, "variants": zoo.variants,
               "evaluation": subset.as_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def preview_path(zoo, subset: EvalSubset) -> Path:
    """Where the zoo's preview for ``subset`` is (or will be) stored."""
    return analysis_dir(zoo) / "cache" / f"{KIND}-{preview_key(zoo, subset)[:24]}.safetensors"


def load_preview(zoo, subset: EvalSubset) -> PreviewTensors | None:
    """The stored preview if it exists, parses, was written for this zoo and subset (its key) and holds every
    checkpoint's J τ with matching shapes; else None (the caller recomputes)."""
    path = preview_path(zoo, subset)
    if not path.is_file():
        return None
    try:
        meta = read_metadata(path)
        tensors = load_state_dict(path)
    except (CheckpointError, OSError, ValueError, RuntimeError):
        return None  # unreadable, truncated or not finite: recompute
    if meta.get("key") != preview_key(zoo, subset) or "base" not in tensors or "labels" not in tensors:
        return None
    base, labels = tensors["base"], tensors["labels"]
    jvps = {task_id(t, v): tensors.get(f"jvp/{task_id(t, v)}") for v in zoo.variants for t in zoo.tasks}
    if base.ndim != 2 or len(labels) != len(base) or any(j is None or j.shape != base.shape for j in jvps.values()):
        return None
    return PreviewTensors(base=base, jvps=jvps, labels=labels)


def compute_preview(zoo, subset: EvalSubset, progress: Progress | None = None,
                    device: str | torch.device = "auto") -> PreviewTensors:
    """f(x; θ0) and J τ_t for every checkpoint on the subset's images (its own evaluator and encoder module, and
    reverse-mode J·v, so it may run in a thread beside an explorer). ``progress(done, total, stage)`` is called before each step (a job's callback
    stops the computation there when it is cancelled)."""
    _require_linearized(zoo)
    report = progress or (lambda done, total, stage="": None)
    pairs = [(t, v) for v in zoo.variants for t in zoo.tasks]
    total = 2 + len(pairs)
    report(0, total, "instant preview: evaluation images")
    ev = Evaluator.from_zoo(zoo, split=subset.split, n_per_task=subset.n_per_task, seed=subset.seed, device=device)
    ev.encoder = zoo.create_encoder().to(ev.device).eval()  # twice differentiable (no fused attention kernel)
    preview = LinearPreview(ev, max_directions=1, reverse_mode=True)  # thread-safe beside forward-mode AD
    report(1, total, "instant preview: f(θ0)")
    base = preview.base().to("cpu")
    jvps = {}
    for i, (task, variant) in enumerate(pairs):
        report(2 + i, total, f"instant preview: J·τ {task} ({variant})")
        jvps[task_id(task, variant)] = preview.jvp(task_id(task, variant),
                                                   lambda t=task, v=variant: zoo.task_vector(t, v)).to("cpu")
    report(total, total, "instant preview: saving")
    return PreviewTensors(base=base, jvps=jvps, labels=ev.labels.to("cpu"))


def save_preview(zoo, subset: EvalSubset, tensors: PreviewTensors) -> Path:
    """Write ``tensors`` atomically to :func:`preview_path` (ZooError when the zoo is not writable)."""
    path = preview_path(zoo, subset)
    meta = {"key": preview_key(zoo, subset), "format": PREVIEW_FORMAT, "library": __version__, **subset.as_dict(),
            "tasks": zoo.tasks, "variants": zoo.variants}
    data = {"base": tensors.base, "labels": tensors.labels, **{f"jvp/{k}": v for k, v in tensors.jvps.items()}}
    try:
        save_state_dict(data, path, metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    except OSError as exc:
        raise ZooError(f"{path}: cannot write the instant preview ({exc.strerror or exc})") from exc
    return path


def precompute_preview(zoo, subset: EvalSubset = EXPLORER_SUBSET, progress: Progress | None = None,
                       device: str | torch.device = "auto", force: bool = False) -> Path:
    """Compute and store the zoo's preview for ``subset`` unless a valid one is on disk (``force``: recompute)."""
    _require_linearized(zoo)
    if not force and load_preview(zoo, subset) is not None:
        return preview_path(zoo, subset)
    return save_preview(zoo, subset, compute_preview(zoo, subset, progress, device))
