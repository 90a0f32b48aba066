"""One identity for a merge: ``MergeSpec.identity`` / ``key`` — two specs share a key iff they merge to the same weights.

The property test builds pairs of specs (a random spec and a random edit of it, some edits changing the merge and some
only re-expressing it) and compares their keys with the merged tensors themselves (``torch.equal`` over every
tensor of the method's output on fixed random task vectors): an independent check, not the key code against itself.
"""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sammerge.merging import MergeSpec, get_method

TASKS = ["a", "b", "c"]
VARIANTS = ["plain", "sam"]
SHAPES = {"stem.conv.weight": (4, 1, 3, 3), "stages.0.0.conv1.weight": (6, 4, 3, 3), "stages.0.0.conv1.bias": (6,),
          "stages.1.0.fc.weight": (5, 6)}
GROUPS = ["stem", "stages.0", "stages.1"]


def _tensors() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    theta0 = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    # task vectors share a common part (cosines ≈ 0.5, as fine-tuned task vectors do): with independent random ones
    # Model Stock's angle rule gives θ0 for any task set, and merges that differ do not differ in their weights
    common = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    tvs = {(t, v): {k: 0.1 * (common[k] + torch.randn(s, generator=g)) for k, s in SHAPES.items()}
           for t in TASKS for v in VARIANTS}
    return theta0, tvs


THETA0, TVS = _tensors()
# methods with λ, per-task weights, densities and per-layer coefficients, and one without any of them
# (TIES keeps ≥ half of every task vector here: with fewer kept entries two tasks' trimmed vectors can be disjoint on
# a layer, and then TIES' weight-normalized mean gives every entry its one task's value whatever the weights — equal
# weights under different keys, a true coincidence of those tensors, not a key defect)
METHODS = {"task_arithmetic": {"lambda": [0.3, 0.5]}, "ties": {"lambda": [0.7, 1.0], "density": [0.5, 0.8]},
           "dare_linear": {"lambda": [0.4, 0.6], "density": [0.5, 0.8], "seed": [0, 1]}, "model_stock": {}}


def spec_of(method: str, params: dict, rows: list[dict], **provenance) -> MergeSpec:
    tasks = [{"checkpoint": f"/ckpt/{r['task']}-{r.get('variant', 'plain')}.safetensors", **r} for r in rows]
    return MergeSpec.from_dict({"method": method, "params": params, "tasks": tasks, "base_model": "/ckpt/base",
                                **provenance})


def merged(spec: MergeSpec) -> dict[str, torch.Tensor]:
    tvs = [TVS[(t.task, t.variant)] for t in spec.tasks]
    return get_method(spec.method)(THETA0, tvs, task_ids=spec.task_ids, **spec.method_kwargs)


def same_weights(a: MergeSpec, b: MergeSpec) -> bool:
    ma, mb = merged(a), merged(b)
    return ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@st.composite
def base_specs(draw):
    method = draw(st.sampled_from(sorted(METHODS)))
    params = {name: draw(st.sampled_from(values)) for name, values in METHODS[method].items()}
    chosen = draw(st.lists(st.sampled_from(TASKS), min_size=2, max_size=3, unique=True))
    rows = []
    for t in sorted(chosen, key=TASKS.index):
        row = {"task": t, "variant": draw(st.sampled_from(VARIANTS))}
        if method != "model_stock":
            row["weight"] = draw(st.sampled_from([0.5, 1.0, 1.5]))
            if draw(st.booleans()):
                row["layer_weights"] = {draw(st.sampled_from(GROUPS)): draw(st.sampled_from([0.25, 2.0]))}
        if method in ("ties", "dare_linear") and draw(st.booleans()):
            row["density"] = draw(st.sampled_from([0.5, 0.9] if method == "ties" else [0.3, 0.9]))
        rows.append(row)
    return method, params, rows


EDITS = ["provenance", "explicit_global_density", "unit_layer_weight", "lambda", "weight", "variant", "density",
         "layer_weight", "drop_task", "method", "seed"]


@st.composite
def spec_pairs(draw):
    method, params, rows = draw(base_specs())
    edit = draw(st.sampled_from(EDITS))
    p2, r2, m2, prov = dict(params), [dict(r) for r in rows], method, {}
    i = draw(st.integers(0, len(rows) - 1))
    if edit == "provenance":  # where the files live, notes, results, time: not the merge
        prov = {"notes": "another note", "created": "2020-01-01T00:00:00+00:00", "results": {"a": {"acc": 0.5}}}
    elif edit == "explicit_global_density" and "density" in params:
        r2[i]["density"] = params["density"]  # a per-task density equal to the global one
    elif edit == "unit_layer_weight" and method != "model_stock":
        r2[i]["layer_weights"] = {**r2[i].get("layer_weights", {}), "stages.1": 1.0} \
            if "stages.1" not in r2[i].get("layer_weights", {}) else r2[i]["layer_weights"]
    elif edit == "lambda" and "lambda" in params:
        p2["lambda"] = params["lambda"] + 0.25
    elif edit == "weight" and method != "model_stock":
        r2[i]["weight"] = rows[i]["weight"] + 0.75
    elif edit == "variant":
        r2[i]["variant"] = "sam" if rows[i]["variant"] == "plain" else "plain"
    elif edit == "density" and method in ("ties", "dare_linear"):
        r2[i]["density"] = 0.6 if rows[i].get("density", params["density"]) != 0.6 else 0.7
    elif edit == "layer_weight" and method != "model_stock":
        lw = dict(rows[i].get("layer_weights", {}))
        lw["stem"] = 3.0 if lw.get("stem") != 3.0 else 0.5
        r2[i]["layer_weights"] = lw
    elif edit == "drop_task" and len(rows) > 2:
        del r2[i]
    elif edit == "method" and method == "task_arithmetic":
        m2 = "ties"
        p2 = {"lambda": params["lambda"]}
    elif edit == "seed" and method == "dare_linear":
        p2["seed"] = 1 - params["seed"]
    return spec_of(method, params, rows), spec_of(m2, p2, r2, **prov), edit


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(spec_pairs())
def test_two_specs_share_a_key_iff_they_merge_to_the_same_weights(pair):
    a, b, edit = pair
    assert (a.key() == b.key()) == same_weights(a, b), (edit, a.key(), b.key())
    # and the identity without λ: equal iff the merges agree at every λ (here: at the spec's λ and at λ + 0.5)
    if a.has_lambda and b.has_lambda:
        same_everywhere = all(same_weights(a.with_params(**{"lambda": lam}), b.with_params(**{"lambda": lam}))
                              for lam in (b.params["lambda"], b.params["lambda"] + 0.5))
        assert (a.key(with_lambda=False) == b.key(with_lambda=False)) == same_everywhere, edit


def test_files_are_part_of_the_key_only_when_asked():
    rows = [{"task": "a", "sha256": "0" * 64}, {"task": "b", "sha256": "1" * 64}]
    a = spec_of("task_arithmetic", {"lambda": 0.3}, rows)
    b = spec_of("task_arithmetic", {"lambda": 0.3}, [rows[0], {**rows[1], "sha256": "2" * 64}])
    assert a.key() == b.key() and a.key(files=True) != b.key(files=True)
    assert json.loads(a.key(files=True))["files"] == [None, "0" * 64, "1" * 64]


# -- the layer-weights regression: a merge with per-layer coefficients never reads another merge's sweep --------------
def test_sweep_cache_tells_layer_weights_apart(tiny_zoo_copy):
    from sammerge.jobs.sweeps import load_cached_sweep, merge_identity, run_sweeps, sweep_key
    from sammerge.zoo import open_zoo

    zoo = open_zoo(tiny_zoo_copy)
    plain = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.3}, "plain")
    layered = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.3}, "plain",
                                layer_weights={zoo.tasks[0]: {"stem": 0.0}})
    assert sweep_key(zoo, plain) != sweep_key(zoo, layered)
    assert merge_identity(layered)["tasks"][0][-1] == {"stem": 0.0}
    run_sweeps(zoo, [plain])
    assert load_cached_sweep(zoo, plain) is not None and load_cached_sweep(zoo, layered) is None
    results = run_sweeps(zoo, [layered])
    layered_sweep = results[sweep_key(zoo, layered)]
    # the layered sweep is the layered merge's own: compare with a direct evaluation of its merge at λ = 0.5
    from sammerge.evaluation.evaluator import Evaluator, mean_accuracy
    from sammerge.jobs.sweeps import EVALUATION
    from sammerge.merging import merge_zoo

    ev = Evaluator.from_zoo(zoo, **EVALUATION)
    i = layered_sweep.lambdas.index(0.5)
    direct = mean_accuracy(ev.evaluate(merge_zoo(zoo, layered.with_params(**{"lambda": 0.5}))))
    assert layered_sweep.val_mean[i] == pytest.approx(direct, abs=1e-9)
    assert load_cached_sweep(zoo, plain).val_mean != layered_sweep.val_mean
