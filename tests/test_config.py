"""MergeSpec I/O, mergekit YAML export/import, resolve_and_merge errors."""
import json
import subprocess
from pathlib import Path

import pytest

import mergekit_oracle
import torch
import yaml

from sammerge.merging import (MergeSpec, from_mergekit_yaml, load_any_config, resolve_and_merge,
                              to_mergekit_yaml)
from sammerge.errors import CheckpointError, ConfigError, MergeError
from sammerge.io import save_state_dict, sha256_file


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    pre = {"w": torch.randn(6, 5), "b": torch.randn(5)}
    save_state_dict(pre, tmp_path / "base.safetensors")
    for i, name in enumerate(["digits__plain", "letters__sam", "shapes__plain"]):
        save_state_dict({k: v + torch.randn_like(v) for k, v in pre.items()}, tmp_path / f"{name}.safetensors")
    return tmp_path


NAMES = [("digits", "plain"), ("letters", "sam"), ("shapes", "plain")]


def make_cfg(root, method="task_arithmetic", params=None, weights=(1.0, 0.5, 2.0), densities=None, **extra):
    densities = densities or (None,) * len(NAMES)
    return MergeSpec.from_dict({
        "method": method, "params": params or {}, "base_model": "base.safetensors", "zoo": str(root),
        "tasks": [{"task": t, "variant": v, "weight": w, "density": d, "checkpoint": f"{t}__{v}.safetensors"}
                  for (t, v), w, d in zip(NAMES, weights, densities)], **extra}, root_dir=root)


def reference_merge(root, method, params, weights=(1.0, 0.5, 2.0), densities=None):
    """The expected merge, computed here in float64 with plain torch from the checkpoint files (no sammerge code),
    following the papers / mergekit 0.1.5 formulas; every parameter is passed explicitly (mergekit's defaults for
    lambda and normalize). With τ_t = θ_t − θ_0:
      weight_average   Σ_t w_t θ_t / Σ_t w_t
      task_arithmetic  θ_0 + λ Σ_t w_t τ_t  (/ Σ_t w_t if normalize)
      ties             τ̂_t = top-k(|τ_t|) per tensor (k = max(1, int(density_t·n)); per model if trim_scope
                       'model'); d_t = w_t τ̂_t; γ = sign(Σ_t d_t) (0 → +); θ_0 + λ Σ_t d_t[sgn d_t = γ] /
                       Σ_t w_t[sgn d_t = γ] (divisor 0 → 1; a plain sum if not normalize)
      breadcrumbs      τ̂_t keeps ranks [int(γn), int(γn) + int(density_t·n)) of |τ_t| per tensor (descending);
                       θ_0 + λ Σ_t w_t τ̂_t
    Returns None for the DARE methods (random drop masks: no closed form to check against).
    """
    from safetensors.torch import load_file

    def load(name):
        return {k: v.double() for k, v in load_file(root / f"{name}.safetensors").items()}

    known = {"weight_average": set(), "task_arithmetic": {"lambda", "normalize"},
             "ties": {"density", "lambda", "normalize", "trim_scope"}, "breadcrumbs": {"density", "gamma", "lambda"}}
    if method.startswith("dare"):
        return None
    assert set(params) <= known[method], f"reference_merge does not implement {set(params) - known[method]}"
    base = load("base")
    fts = [load(f"{t}__{v}") for t, v in NAMES]
    w = [float(x) for x in weights]
    if method == "weight_average":
        return {k: sum(wt * ft[k] for wt, ft in zip(w, fts)) / sum(w) for k in base}
    lam = params.get("lambda", 1.0)
    taus = [{k: ft[k] - base[k] for k in base} for ft in fts]
    dens = [d if d is not None else params.get("density") for d in (densities or [None] * len(NAMES))]
    if method == "task_arithmetic":
        delta = {k: sum(wt * tau[k] for wt, tau in zip(w, taus)) for k in base}
        if params.get("normalize", False):
            delta = {k: v / sum(w) for k, v in delta.items()}
    elif method == "ties":
        keys = sorted(base)
        trimmed = []
        for tau, d in zip(taus, dens):
            if params.get("trim_scope", "tensor") == "model":
                flat = torch.cat([tau[k].reshape(-1) for k in keys])
                keep = torch.zeros_like(flat)
                keep[torch.topk(flat.abs(), max(1, int(d * flat.numel()))).indices] = 1
                sizes = [tau[k].numel() for k in keys]
                trimmed.append({k: (tau[k].reshape(-1) * m).reshape(tau[k].shape)
                                for k, m in zip(keys, keep.split(sizes))})
            else:
                out = {}
                for k in keys:
                    flat = tau[k].reshape(-1)
                    keep = torch.zeros_like(flat)
                    keep[torch.topk(flat.abs(), max(1, int(d * flat.numel()))).indices] = 1
                    out[k] = (flat * keep).reshape(tau[k].shape)
                trimmed.append(out)
        delta = {}
        for k in keys:
            d_t = torch.stack([wt * tr[k] for wt, tr in zip(w, trimmed)])
            elected = torch.where(d_t.sum(0) >= 0, 1.0, -1.0).double()
            agree = (torch.sign(d_t) == elected).double()
            delta[k] = (d_t * agree).sum(0)
            if params.get("normalize", True):
                divisor = (torch.tensor(w, dtype=torch.float64).view(-1, *[1] * base[k].dim()) * agree).sum(0)
                delta[k] = delta[k] / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    elif method == "breadcrumbs":
        delta = {k: torch.zeros_like(v) for k, v in base.items()}
        for wt, tau, d in zip(w, taus, dens):
            for k in base:
                flat = tau[k].reshape(-1)
                n = flat.numel()
                n_keep, n_top = int(d * n), int(params["gamma"] * n)
                n_top = min(n_top, n - n_keep)
                keep = torch.zeros_like(flat)
                keep[torch.argsort(flat.abs(), descending=True)[n_top:n_top + n_keep]] = 1
                delta[k] += wt * (flat * keep).reshape(tau[k].shape)
    return {k: base[k] + lam * delta[k] for k in base}


def assert_matches(merged, expected, what, atol=1e-6, rtol=0.0):
    """Same keys, float32, same shapes, |merged − expected| <= atol + rtol·|expected| everywhere."""
    assert set(merged) == set(expected), what
    for k in expected:
        assert merged[k].dtype == torch.float32 and merged[k].shape == expected[k].shape, (what, k)
        exp = expected[k].double()
        excess = ((merged[k].double() - exp).abs() - (atol + rtol * exp.abs())).max().item()
        diff = (merged[k].double() - exp).abs().max().item()
        assert excess <= 0, f"{what}: '{k}' differs by up to {diff:.3g} (atol {atol:g}, rtol {rtol:g})"


CASES = [("weight_average", {}), ("task_arithmetic", {"lambda": 0.4}), ("ties", {"density": 0.5}),
         ("ties", {"density": 0.5, "trim_scope": "model"}), ("dare_linear", {"density": 0.5, "seed": 3}),
         ("dare_ties", {"density": 0.7}), ("breadcrumbs", {"density": 0.6, "gamma": 0.1})]


@pytest.mark.parametrize("method,params", CASES)
@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_save_load_identical_merge(files, method, params, suffix):
    cfg = make_cfg(files, method, params, results={"digits": {"accuracy": 0.9}})
    merged, resolved = resolve_and_merge(cfg)
    resolved.save(files / f"cfg{suffix}")
    again = MergeSpec.load(files / f"cfg{suffix}")
    assert again.to_dict() == resolved.to_dict()
    merged2, _ = resolve_and_merge(again)
    assert all(torch.equal(merged[k], merged2[k]) for k in merged)
    expected = reference_merge(files, method, params)
    if expected is not None:
        assert_matches(merged2, expected, f"{method} {params} vs plain-torch reference (float64)", rtol=1e-6)
    # resolved config has absolute paths, hashes, full params
    assert Path(resolved.base_model).is_absolute() and resolved.base_sha256 == sha256_file(files / "base.safetensors")
    assert all(t.sha256 for t in resolved.tasks) and "lambda" in resolved.params or method == "weight_average"


def test_provenance_fields(files):
    cfg = make_cfg(files)
    d = json.loads(cfg.to_json())
    assert d["library_version"] and d["created"] and d["zoo"] == str(files)
    assert d["tasks"][1] == {"task": "letters", "variant": "sam", "weight": 0.5, "density": None,
                             "checkpoint": "letters__sam.safetensors", "sha256": None}


def test_mergekit_yaml_structure(files):
    for method, params in CASES:
        cfg = make_cfg(files, method, params)
        text = to_mergekit_yaml(cfg)
        assert text.startswith("# mergekit configuration exported by sammerge")
        doc = yaml.safe_load(text)
        assert doc["dtype"] == "float32"
        assert doc["merge_method"] == {"weight_average": "linear"}.get(method, method)
        for m in doc["models"]:
            assert isinstance(m["parameters"], dict) and "weight" in m["parameters"]
            assert Path(m["model"]).is_absolute()
        if method == "weight_average":
            assert "base_model" not in doc and doc["parameters"] == {"normalize": True}
        else:
            assert doc["base_model"].endswith("base.safetensors")
            assert doc["parameters"]["lambda"] == params.get("lambda", 1.0)
            assert doc["parameters"]["normalize"] is (method == "ties")
        if "density" in params:
            assert all(m["parameters"]["density"] == params["density"] for m in doc["models"])
        if method in ("dare_linear", "dare_ties"):
            assert "SEMANTICS DIFFER" in text and "DARE" in text
        if params.get("trim_scope") == "model":
            assert "SEMANTICS DIFFER" in text and "flattened" in text
        if method == "breadcrumbs":
            assert "SEMANTICS MAY DIFFER" in text and doc["models"][0]["parameters"]["gamma"] == 0.1


ROUNDTRIP_CASES = ([(m, p, None) for m, p in CASES if p.get("trim_scope") != "model"]
                   + [("task_arithmetic", {"lambda": 0.7, "normalize": True}, None),
                      ("ties", {"density": 0.5, "lambda": 0.8, "normalize": False}, (0.3, 0.9, 0.5)),
                      ("breadcrumbs", {"density": 0.6, "gamma": 0.1, "lambda": 1.3}, (0.5, 0.7, 0.6))])


@pytest.mark.parametrize("method,params,densities", ROUNDTRIP_CASES)
def test_mergekit_roundtrip_same_merge(files, method, params, densities):
    cfg = make_cfg(files, method, params, densities=densities)
    merged, _ = resolve_and_merge(cfg)
    back = from_mergekit_yaml(to_mergekit_yaml(cfg), root_dir=files)
    assert back.method == method
    assert [t.weight for t in back.tasks] == [1.0, 0.5, 2.0]
    assert [(t.task, t.variant) for t in back.tasks] == [("digits", "plain"), ("letters", "sam"), ("shapes", "plain")]
    if method.startswith("dare"):  # the seed is sammerge's, not mergekit's: not exported
        back = back.with_params(seed=params.get("seed", 0))
    # every parameter survives exactly (same value, same type): given ones, and the full effective kwargs
    for key, value in params.items():
        if key != "seed" and not (key == "density" and densities):
            assert back.params[key] == value and type(back.params[key]) is type(value), key
    kw, kw_back = cfg.method_kwargs, back.method_kwargs
    if densities:  # per-task densities come back per task (the global density then is their max)
        eff = [d if d is not None else kw["density"] for d in kw.pop("densities")]
        assert [d if d is not None else kw_back["density"] for d in kw_back.pop("densities")] == eff
        assert eff == list(densities)
        kw.pop("density"), kw_back.pop("density")
    assert kw_back == kw
    merged2, _ = resolve_and_merge(back)
    # (weight_average comes back as mergekit linear, re-based on the first model: equal up to float rounding)
    assert_matches(merged2, merged, "merge of the re-imported config")
    # and the merge of the re-imported config is the right one, computed independently
    expected = reference_merge(files, method, params, densities=densities)
    if expected is not None:
        assert_matches(merged2, expected, f"{method} {params} vs plain-torch reference (float64)", rtol=1e-6)


def test_from_mergekit_semantics(files):
    text = f"""
merge_method: ties
base_model: base.safetensors
models:
  - model: base.safetensors
  - model: digits__plain.safetensors
    parameters: {{weight: 0.5, density: 0.4}}
  - model: letters__sam.safetensors
    parameters: {{weight: 1.0, density: 0.8}}
parameters: {{lambda: 0.9}}
dtype: float32
"""
    cfg = from_mergekit_yaml(text, root_dir=files)
    assert cfg.method == "ties" and len(cfg.tasks) == 2  # base is not a task
    assert [t.density for t in cfg.tasks] == [0.4, 0.8] and cfg.params["lambda"] == 0.9
    # mergekit defaults: density 1, weight 1; linear -> weight_average
    cfg = from_mergekit_yaml({"merge_method": "linear", "models": [
        {"model": str(files / "digits__plain.safetensors"), "parameters": {"weight": 1.0}},
        {"model": str(files / "letters__sam.safetensors"), "parameters": {"weight": 3.0}}]}, root_dir=files)
    merged, _ = resolve_and_merge(cfg)
    from safetensors.torch import load_file
    a, b = load_file(files / "digits__plain.safetensors"), load_file(files / "letters__sam.safetensors")
    assert torch.allclose(merged["w"], (a["w"] + 3 * b["w"]) / 4, atol=1e-6)


@pytest.mark.parametrize("doc,match", [
    ({"merge_method": "slerp", "models": [{"model": "a"}]}, "merge_method 'slerp'|unsupported merge_method"),
    ({"merge_method": "ties", "base_model": "base.safetensors",
      "models": [{"model": "a.safetensors", "parameters": {"weight": 1, "alpha": 2}}]}, "unknown parameter 'alpha'"),
    ({"merge_method": "ties", "base_model": "base.safetensors", "parameters": {"foo": 1},
      "models": [{"model": "a.safetensors"}]}, "unknown parameter 'foo'"),
    ({"merge_method": "ties", "base_model": "base.safetensors",
      "models": [{"model": "a.safetensors", "parameters": {"density": 1.5}}]}, "density"),
    ({"merge_method": "task_arithmetic", "models": [{"model": "a.safetensors"}]}, "base_model"),
    ({"merge_method": "task_arithmetic", "base_model": "b.safetensors",
      "models": [{"model": "a.safetensors", "parameters": {"weight": [0, 1]}}]}, "gradients"),
])
def test_from_mergekit_errors(files, doc, match):
    with pytest.raises(ConfigError, match=match):
        from_mergekit_yaml(doc, root_dir=files)


def test_config_validation_errors(files):
    with pytest.raises(ConfigError, match="unknown merge method 'fancy'"):
        make_cfg(files, "fancy")
    with pytest.raises(ConfigError, match="unknown parameter 'alpha'"):
        make_cfg(files, "ties", {"alpha": 1})
    with pytest.raises(ConfigError, match="density"):
        make_cfg(files, "ties", {"density": 0.0})
    with pytest.raises(ConfigError, match="field 'tasks.0.density'"):
        MergeSpec.from_dict({"method": "ties", "base_model": "b", "tasks": [
            {"task": "a", "checkpoint": "a", "density": 2.0}]})
    with pytest.raises(ConfigError, match="field 'tasks'"):
        MergeSpec.from_dict({"method": "ties", "base_model": "b", "tasks": []})
    with pytest.raises(ConfigError, match="field 'tasks.0.weight'"):
        MergeSpec.from_dict({"method": "ties", "base_model": "b", "tasks": [
            {"task": "a", "checkpoint": "a", "weight": float("nan")}]})
    with pytest.raises(ConfigError, match="field 'colour'"):
        MergeSpec.from_dict({"method": "ties", "base_model": "b", "colour": 1,
                               "tasks": [{"task": "a", "checkpoint": "a"}]})
    with pytest.raises(ConfigError, match="per task"):
        make_cfg(files, "ties", {"weights": [1, 2, 3]})
    (files / "bad.yaml").write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*invalid YAML"):
        MergeSpec.load(files / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_any_config(files / "nope.yaml")


def test_resolve_errors(files):
    cfg = make_cfg(files)
    (files / "shapes__plain.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shapes__plain.safetensors: file not found"):
        resolve_and_merge(cfg)
    save_state_dict({"w": torch.zeros(5, 6), "b": torch.zeros(5)}, files / "shapes__plain.safetensors")
    with pytest.raises(MergeError, match=r"'w'.*\[6, 5\].*\[5, 6\]"):
        resolve_and_merge(cfg)
    save_state_dict({"w": torch.full((6, 5), float("nan")), "b": torch.zeros(5)}, files / "shapes__plain.safetensors")
    with pytest.raises(CheckpointError, match="NaN"):
        resolve_and_merge(cfg)
    save_state_dict({"w": torch.zeros(6, 5)}, files / "shapes__plain.safetensors")
    with pytest.raises(MergeError, match="'b'"):
        resolve_and_merge(cfg)
    bad_sha = cfg.model_copy(update={"base_sha256": "0" * 64})
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve_and_merge(bad_sha)


@pytest.fixture(scope="module")
def mergekit_pytorch():
    """The ``mergekit-pytorch`` command (:func:`mergekit_oracle.mergekit_pytorch`: fails where CI requires it)."""
    return mergekit_oracle.mergekit_pytorch()


@pytest.mark.parametrize("method,params,densities", [
    ("weight_average", {}, None), ("task_arithmetic", {"lambda": 0.7}, None),
    ("task_arithmetic", {"normalize": True}, None), ("ties", {"density": 0.6}, None),
    ("ties", {"density": 0.5, "lambda": 0.8, "normalize": False}, (0.3, 0.9, 0.5))])
def test_mergekit_pytorch_gives_same_weights(files, mergekit_pytorch, method, params, densities):
    """mergekit-pytorch on our exported YAML gives our weights (float32; mergekit's linear sums w_t θ_t where we
    add to θ_0, so it may differ by float rounding; task_arithmetic and ties agree bit for bit in 0.1.5)."""
    from safetensors.torch import load_file
    cfg = make_cfg(files, method, params, densities=densities)
    merged, resolved = resolve_and_merge(cfg)
    (files / "mk.yml").write_text(to_mergekit_yaml(resolved))
    proc = subprocess.run([mergekit_pytorch, str(files / "mk.yml"), str(files / "mk_out")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = load_file(files / "mk_out" / "model.safetensors")
    assert_matches(theirs, merged, f"mergekit-pytorch {method} {params}")
