"""Apply a :class:`MergeSpec`: load its checkpoints (sha256-checked, never unpickled) and run the method."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from sammerge.errors import CheckpointError, MergeError
from sammerge.io import content_sha256, load_state_dict, sha256_file
from sammerge.merging.spec import MergeSpec, library_version, now
from sammerge.merging.statistics import spec_statistics
from sammerge.merging.task_vector import StateDict, check_compatible, check_task_vectors, task_vector

__all__ = ["resolve_and_merge", "merge_zoo"]


def merge_zoo(zoo, spec: MergeSpec, task_vectors=None) -> StateDict:
    """θ for ``spec`` over a zoo's loaded checkpoints (``task_vectors``: an optional (task, variant) → τ cache; a
    method that reads unlabeled images gets its statistics from the zoo)."""
    tvs = [task_vectors(t.task, t.variant) if task_vectors else zoo.task_vector(t.task, t.variant) for t in spec.tasks]
    return spec.spec(zoo.pretrained(), tvs, task_ids=spec.task_ids, validate=False,
                     statistics=spec_statistics(zoo, spec), **spec.method_kwargs)



def _load_checked(path: Path, sha: str | None) -> tuple[dict[str, torch.Tensor], str]:
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    actual = sha256_file(path) if path.is_file() else None
    if sha is not None and actual is not None and actual != sha:
        raise CheckpointError(f"{path}: sha256 mismatch (expected {sha[:12]}…, got {actual[:12]}…)")
    sd = load_state_dict(path)  # existence / format / NaN-Inf checks (CheckpointError)
    return sd, actual or ""


def _substitute(path: Path, recorded: str | None, originals: Mapping[str, Path]) -> tuple[Path, str | None]:
    """(zoo file, None) when ``path`` (or its recorded sha256) is a user's original file an imported zoo converted;
    else (path, recorded)."""
    sha = recorded or (content_sha256(path) if path.exists() else None)
    if sha is not None and sha in originals:
        return Path(originals[sha]), None
    return path, recorded


def _check_zoo_models(zoo, config: MergeSpec, shas: list[str]) -> None:
    """The statistics come from the zoo's models: each config file must be the zoo's checkpoint of its task."""
    problems = []
    for entry, sha in zip(config.tasks, shas):
        if entry.task not in zoo.tasks or entry.variant not in zoo.variants:
            problems.append(f"task '{entry.task}' / variant '{entry.variant}' is not in zoo '{zoo.path}'")
        elif zoo.manifest.checkpoint(entry.task, entry.variant).sha256 != sha:
            problems.append(f"{entry.checkpoint} is not zoo '{zoo.path}''s checkpoint of {entry.task} / {entry.variant}")
    if problems:
        raise MergeError(f"merge method '{config.method}' computes its statistics with the zoo's models: "
                         + "; ".join(problems))


def resolve_and_merge(config: MergeSpec, root_dir: str | os.PathLike | None = None,
                      originals: Mapping[str, Path] | None = None, zoo=None) -> tuple[dict[str, torch.Tensor], MergeSpec]:
    """Load base + task checkpoints (verifying sha256 when recorded), check them, run the method.

    Returns ``(merged_state_dict, resolved_config)``; the resolved config has absolute paths, sha256 of
    every file, every global parameter (defaults filled in), the current library version and time.
    Nothing is written. Missing files → CheckpointError naming the path; incompatible tensors → MergeError.
    ``originals`` (an imported zoo's ``Zoo.original_files()``, sha256 → converted file) lets a config name the
    user's original checkpoint files: matched by content hash, the zoo's converted file is loaded instead.
    ``zoo``: where a method that reads unlabeled images (RegMean, Fisher) gets them, task by task (MergeError
    without one).
    """
    method = config.spec
    if method.needs_data and zoo is None:
        raise MergeError(f"merge method '{method.name}' reads unlabeled images of every task: merge from a zoo "
                         f"whose tasks the config names (sammerge merge CONFIG OUT --zoo ZOO, or the app)")
    kwargs = config.method_kwargs
    base_path = config.resolve_path(config.base_model, root_dir)
    paths = [config.resolve_path(t.checkpoint, root_dir) for t in config.tasks]
    base_sha, task_shas = config.base_sha256, [t.sha256 for t in config.tasks]
    if originals:
        base_path, base_sha = _substitute(base_path, base_sha, originals)
        pairs = [_substitute(p, s, originals) for p, s in zip(paths, task_shas)]
        paths, task_shas = [p for p, _ in pairs], [s for _, s in pairs]
    missing = [str(p) for p in [base_path, *paths] if not p.exists()]
    if missing:
        raise CheckpointError("; ".join(f"{p}: file not found" for p in missing))
    base, base_sha = _load_checked(base_path, base_sha)
    finetuned, shas = [], []
    for expected, p in zip(task_shas, paths):
        sd, sha = _load_checked(p, expected)
        finetuned.append(sd)
        shas.append(sha)
    stored_tv = [t.stored == "task_vector" for t in config.tasks]
    check_compatible([base, *[ft for ft, is_tv in zip(finetuned, stored_tv) if not is_tv]],
                     [str(base_path), *[str(p) for p, is_tv in zip(paths, stored_tv) if not is_tv]])
    # a zoo that ships small stores τ_t itself (e.g. float16): used as stored, in float32
    tvs = [{k: v.float() for k, v in ft.items()} if is_tv else task_vector(ft, base, check_finite=False)
           for ft, is_tv in zip(finetuned, stored_tv)]
    for tv, p, is_tv in zip(tvs, paths, stored_tv):
        if is_tv:
            check_task_vectors(base, [tv], [f"{p} (a task vector)"], check_finite=False)
    if method.needs_data:
        _check_zoo_models(zoo, config, shas)
    merged = method(base, tvs, task_ids=config.task_ids, validate=False, **kwargs,
                    statistics=spec_statistics(zoo, config) if method.needs_data else None)
    global_names = {p.name for p in method.global_params}
    resolved = config.model_copy(update={
        "params": {k: v for k, v in kwargs.items() if k in global_names},
        "tasks": [t.model_copy(update={"checkpoint": str(p), "sha256": s})
                  for t, p, s in zip(config.tasks, paths, shas)],
        "base_model": str(base_path), "base_sha256": base_sha,
        "library_version": library_version(), "created": now(),
    }, deep=True)
    resolved._root_dir = None
    # re-validate the resolved config (model_copy skips validation)
    return merged, MergeSpec.from_dict(resolved.to_dict())
