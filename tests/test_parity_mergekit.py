"""DELLA and SLERP against mergekit 0.1.5 (``mergekit-pytorch`` on our exported YAML), max |difference| ≤ 1e-5.

DELLA draws random keep masks; for the comparison both sides read the same fixed "random" numbers (a positional
sequence replacing sammerge's :func:`~sammerge.merging.sparsify.random_uniform` and mergekit's ``torch.bernoulli``),
so keep probabilities, L1 rescale, weights, sign election, normalisation and λ are all mergekit's.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mergekit_oracle import run_mergekit
from sammerge.errors import ConfigError
from sammerge.io import save_state_dict
from sammerge.merging import MergeSpec, from_mergekit_yaml, resolve_and_merge, to_mergekit_yaml

TOL = 1e-5
SHAPES = {"w": (6, 9), "b": (9,), "conv": (4, 3, 2, 2)}


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(3)
    pre = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    save_state_dict(pre, tmp_path / "base.safetensors")
    for name in ("digits__plain", "letters__sam", "shapes__plain"):
        save_state_dict({k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in pre.items()},
                        tmp_path / f"{name}.safetensors")
    return tmp_path


def _spec(root, method, params, names, weights=None, densities=None):
    tasks = []
    for i, name in enumerate(names):
        task, variant = name.split("__")
        entry = {"task": task, "variant": variant, "checkpoint": f"{name}.safetensors"}
        if weights:
            entry["weight"] = weights[i]
        if densities:
            entry["density"] = densities[i]
        tasks.append(entry)
    return MergeSpec.from_dict({"method": method, "params": params, "base_model": "base.safetensors",
                                "zoo": str(root), "tasks": tasks}, root_dir=root)


def _compare(ours, theirs_path):
    theirs = load_file(theirs_path)
    worst = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours)
    assert worst <= TOL, f"max |sammerge − mergekit| = {worst:.3g}"


@pytest.mark.parametrize("t", [0.0, 0.3, 0.75])
def test_slerp_matches_mergekit(files, t):
    spec = _spec(files, "slerp", {"t": t}, ["digits__plain", "letters__sam"])
    merged, resolved = resolve_and_merge(spec)
    text = to_mergekit_yaml(resolved)
    (files / "mk.yml").write_text(text)
    _compare(merged, run_mergekit(files / "mk.yml", files / "out"))
    again = from_mergekit_yaml(text)
    assert again.method == "slerp" and again.params["t"] == t
    assert [x.task for x in again.tasks] == ["digits", "letters"]
    if t == 0.0:  # t = 0 is the first model itself
        first = load_file(files / "digits__plain.safetensors")
        assert all(torch.allclose(merged[k], first[k], atol=1e-6) for k in first)


def test_slerp_needs_two_models(files):
    with pytest.raises(ConfigError, match="merges exactly 2 tasks, got 3"):
        _spec(files, "slerp", {}, ["digits__plain", "letters__sam", "shapes__plain"])


_POSITIONAL = """
import torch
def _fixed_uniform(shape):
    n = 1
    for s in shape:
        n *= int(s)
    return torch.frac((torch.arange(n, dtype=torch.float64) + 1) * 0.6180339887498949).float().reshape(tuple(shape))
"""


@pytest.mark.parametrize("params,densities", [
    ({"density": 0.5, "epsilon": 0.15}, None),
    ({"density": 0.6, "epsilon": 0.25, "lambda": 0.8, "normalize": False}, (0.4, 0.7, 0.5))])
def test_della_matches_mergekit(files, monkeypatch, params, densities):
    namespace: dict = {}
    exec(_POSITIONAL, namespace)
    import sammerge.merging.sparsify as sparsify
    monkeypatch.setattr(sparsify, "random_uniform", lambda shape, seed, task_id, key: namespace["_fixed_uniform"](shape))
    spec = _spec(files, "della", params, ["digits__plain", "letters__sam", "shapes__plain"], weights=(1.0, 0.5, 2.0),
                 densities=densities)
    merged, resolved = resolve_and_merge(spec)
    text = to_mergekit_yaml(resolved)
    assert "merge_method: della" in text and "epsilon" in text
    (files / "mk.yml").write_text(text)
    prelude = _POSITIONAL + ("torch.bernoulli = lambda probs, *a, **k: "
                             "(_fixed_uniform(probs.shape).to(probs.device) < probs).to(probs.dtype)\n")
    _compare(merged, run_mergekit(files / "mk.yml", files / "out", prelude=prelude))
    # the masks really dropped entries: DELLA is not TIES without trimming
    ties = resolve_and_merge(_spec(files, "ties", {"density": 1.0, "lambda": params.get("lambda", 1.0),
                                                   "normalize": params.get("normalize", True)},
                                   ["digits__plain", "letters__sam", "shapes__plain"], weights=(1.0, 0.5, 2.0)))[0]
    assert max(float((merged[k] - ties[k]).abs().max()) for k in merged) > 1e-2
    back = from_mergekit_yaml(text)
    assert back.method == "della" and back.params["epsilon"] == params["epsilon"]


def test_della_rejects_epsilon_outside_density(files):
    with pytest.raises(ConfigError, match="epsilon"):
        _spec(files, "della", {"density": 0.2, "epsilon": 0.3}, ["digits__plain", "letters__sam"])
