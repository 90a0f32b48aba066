"""Zoo analytics: the stored analysis, its invalidation by checkpoint hashes, on-demand caches, the CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sammerge.analytics.report import (analysis_path, analyze_zoo, disentanglement_for,
                               interpolation_for, load_analysis, random_plane_for, sharpness_table,
                               task_plane_for)
from sammerge.errors import ConfigError
from sammerge.io import save_state_dict, sha256_file
from sammerge.zoo import open_zoo


@pytest.fixture(autouse=True)
def _one_thread():
    """Small double-backward / vmap workloads run far faster single-threaded on the shared 2-core box."""
    from sammerge.analytics.report import torch_threads
    with torch_threads(1):
        yield


# the smallest settings that still exercise every code path
SMALL = dict(n_images=16, eig_iters=3, trace_samples=2, m=8, avg_samples=2, disent_n=3, disent_n_per_task=16)


def _micro_zoo(tmp_path_factory):
    from sammerge.models.presets import get_preset
    from sammerge.training.build import build_zoo

    recipe = get_preset("tiny")
    d = recipe.model_dump()
    d.update(tasks=["digits", "symbols"], max_train_per_task=64)
    d["pretrain"].update(steps=3, max_train=128)
    d["probe"].update(steps=5)
    d["finetune"].update(steps=2, batch_size=32)
    d["evaluation"]["max_train_eval"] = 32
    out = tmp_path_factory.mktemp("analysis_zoo") / "zoo"
    from sammerge.analytics.report import torch_threads

    with torch_threads(1):  # much faster for this micro model on a shared 2-core machine
        build_zoo(type(recipe).model_validate(d), out, device="cpu")
    return out


@pytest.fixture(scope="session")
def analysis_zoo_src(request, tmp_path_factory):
    """A built zoo: the lead's session fixture ``tiny_zoo`` when conftest provides it, else a micro zoo."""
    try:
        return request.getfixturevalue("tiny_zoo")
    except pytest.FixtureLookupError:
        return _micro_zoo(tmp_path_factory)


@pytest.fixture
def zoo(analysis_zoo_src, tmp_path):
    """A private copy (tests write analysis files and edit checkpoints)."""
    dst = tmp_path / "zoo"
    shutil.copytree(analysis_zoo_src, dst, ignore=shutil.ignore_patterns("analysis"))
    return open_zoo(dst)


def _rewrite_checkpoint(zoo, task, variant, edit):
    """Rewrite a fine-tuned checkpoint as ``edit(params)`` and its sha256 in zoo.json; reopen the zoo."""
    rec = zoo.manifest.checkpoint(task, variant)
    save_state_dict(edit({k: v.clone() for k, v in zoo.finetuned(task, variant).items()}), zoo.path / rec.file)
    manifest = json.loads((zoo.path / "zoo.json").read_text())
    for c in manifest["checkpoints"]:
        if c["file"] == rec.file:
            c["sha256"] = sha256_file(zoo.path / rec.file)
    (zoo.path / "zoo.json").write_text(json.dumps(manifest))
    return open_zoo(zoo.path)


def _nudge_first(params):
    first = next(iter(params))
    params[first] = params[first] + 1e-3
    return params


def test_analyze_store_load_and_invalidate(zoo):
    stages = []
    result = analyze_zoo(zoo, quick=True, progress=lambda d, t, s="": stages.append((d, t, s)), **SMALL)
    # the package's one progress signature: progress(done, total, stage)
    assert stages[0] == (0, stages[-1][1], "starting"), stages[0]
    assert all(isinstance(d, int) and isinstance(t, int) and isinstance(s, str) for d, t, s in stages), stages
    assert stages[-1][0] == stages[-1][1]
    assert [d for d, _, _ in stages] == sorted(d for d, _, _ in stages)
    n_ckpt = len(zoo.tasks) * len(zoo.variants)
    assert len(result["sharpness"]) == n_ckpt
    row = result["sharpness"][0]
    for key in ("top_eigenvalue", "trace_mean", "trace_se", "m_sharpness", "m_sharpness_adaptive", "avg_sharpness"):
        assert np.isfinite(row[key]), key
    assert result["settings"]["n_images"] == 16 and result["batches"][zoo.tasks[0]]["seed"] == 0
    for v in zoo.variants:
        C = np.asarray(result["cosine"][v]["matrix"])
        np.testing.assert_allclose(C, C.T)
        np.testing.assert_allclose(np.diag(C), 1)
        assert len(result["disentanglement"][v]) == 1
        assert np.asarray(result["disentanglement"][v][0]["xi"]).shape == (3, 3)
    assert {r["variant"] for r in result["layer_norms"]} == set(zoo.variants)
    table = sharpness_table(result)
    assert list(table.index) == zoo.tasks

    assert analysis_path(zoo).is_file()
    stored = load_analysis(zoo)
    assert stored == result
    # same settings → reused, not recomputed
    again = analyze_zoo(zoo, quick=True, progress=lambda *a: pytest.fail("recomputed"), **SMALL)
    assert again["created"] == result["created"]

    # a changed checkpoint (file rewritten, manifest updated) invalidates the stored analysis
    rec = zoo.manifest.checkpoints[0]
    changed = _rewrite_checkpoint(zoo, rec.task, rec.variant, _nudge_first)
    assert changed.checkpoint_hashes() != zoo.checkpoint_hashes()
    assert load_analysis(changed) is None
    # a corrupt file is "no analysis", not a crash
    analysis_path(zoo).write_text("{not json")
    assert load_analysis(zoo) is None


def test_bad_settings(zoo):
    with pytest.raises(ConfigError):
        analyze_zoo(zoo, quick=True, bogus=1)
    with pytest.raises(ConfigError):
        analyze_zoo(zoo, quick=True, pairs=[(zoo.tasks[0], "nope")])
    with pytest.raises(ConfigError):
        analyze_zoo(zoo, quick=True, variants=["nope"])
    with pytest.raises(ConfigError):
        task_plane_for(zoo, zoo.tasks[0], "nope", zoo.variants[0])


def test_on_demand_caches(zoo):
    t1, t2 = zoo.tasks[:2]
    v = zoo.variants[-1]
    calls = []
    plane = task_plane_for(zoo, t1, t2, v, n=3, n_per_task=16, progress=lambda d, t, s="": calls.append((d, t, s)))
    assert plane.loss[t1].shape == (3, 3) and plane.markers[t1] == (1.0, 0.0)
    assert calls[0] == (0, 9, "task plane") and calls[-1] == (9, 9, "task plane")
    cache_files = list((zoo.path / "analysis" / "cache").glob("task_plane-*.json"))
    assert len(cache_files) == 1
    marked = task_plane_for(zoo, t1, t2, v, n=3, n_per_task=16, merge_point=(0.4, 0.4))
    np.testing.assert_allclose(marked.loss[t1], plane.loss[t1])
    assert marked.markers["merge"] == (0.4, 0.4)
    assert len(list((zoo.path / "analysis" / "cache").glob("task_plane-*.json"))) == 1

    calls.clear()
    rp = random_plane_for(zoo, t1, v, n=3, n_per_task=16, progress=lambda d, t, s="": calls.append((d, t, s)))
    assert rp.kind == "random" and rp.loss[t1].shape == (3, 3)
    assert calls[-1] == (9, 9, "random plane")

    calls.clear()
    curves = interpolation_for(zoo, t1, v, alphas=[0, 1], n_per_task=16,
                               progress=lambda d, t, s="": calls.append((d, t, s)))
    assert set(curves) == {"finetuned"} and curves["finetuned"].loss[t1].shape == (2,)
    assert calls[-1] == (2, 2, "interpolation θ0→θ_t")

    calls.clear()
    d = disentanglement_for(zoo, t1, t2, v, n=2, n_per_task=16, progress=lambda d, t, s="": calls.append((d, t, s)))
    assert d.xi.shape == (2, 2) and d.xi[0, 0] == 0.0
    assert calls[-1] == (8, 8, "disentanglement")



@pytest.fixture
def plane_calls(monkeypatch):
    """Counts the real computations behind task_plane_for (cache hits do not call task_plane)."""
    import sammerge.analytics.landscape as landscape

    calls = []
    real = landscape.task_plane

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(landscape, "task_plane", counting)
    return calls


def _same_plane(a, b):
    np.testing.assert_array_equal(a.xs, b.xs)
    for t in a.loss:
        np.testing.assert_array_equal(a.loss[t], b.loss[t])
        np.testing.assert_array_equal(a.accuracy[t], b.accuracy[t])


def test_cache_agrees_with_recomputation_and_invalidates(zoo, plane_calls):
    """A cache hit equals an uncached recomputation; another setting or a changed checkpoint recomputes."""
    t1, t2 = zoo.tasks[:2]
    v = zoo.variants[-1]
    args = dict(task_i=t1, task_j=t2, variant=v, n_per_task=16)
    first = task_plane_for(zoo, n=2, **args)
    again = task_plane_for(zoo, n=2, **args)
    assert len(plane_calls) == 1  # the second call read the cache
    fresh = task_plane_for(zoo, n=2, use_cache=False, **args)
    assert len(plane_calls) == 2
    _same_plane(again, fresh)  # what the cache returns is what an uncached computation gives
    _same_plane(first, fresh)

    # a changed setting is another computation (and another entry), not the old result
    bigger = task_plane_for(zoo, n=3, **args)
    assert len(plane_calls) == 3 and bigger.loss[t1].shape == (3, 3)
    other_data = task_plane_for(zoo, n=2, seed=1, **args)
    assert len(plane_calls) == 4
    _same_plane(other_data, task_plane_for(zoo, n=2, seed=1, use_cache=False, **args))
    assert len(list((zoo.path / "analysis" / "cache").glob("task_plane-*.json"))) == 3

    # a changed checkpoint (bytes and manifest hash) invalidates every entry of that zoo
    changed = _rewrite_checkpoint(
        zoo, t1, v, lambda p: {k: t * 1.5 if t.is_floating_point() else t for k, t in p.items()})
    n_before = len(plane_calls)
    after = task_plane_for(changed, n=2, **args)
    assert len(plane_calls) == n_before + 1
    _same_plane(after, task_plane_for(changed, n=2, use_cache=False, **args))
    assert not np.array_equal(after.loss[t1], first.loss[t1])


@pytest.mark.parametrize("damage", ["truncated", "empty", "null", "list", "other entry"])
def test_corrupt_cache_entry_is_recomputed(zoo, plane_calls, damage):
    """A damaged entry is recomputed and rewritten (not returned, not a traceback)."""
    t1, t2 = zoo.tasks[:2]
    v = zoo.variants[-1]
    args = dict(task_i=t1, task_j=t2, variant=v, n=2, n_per_task=16)
    good = task_plane_for(zoo, **args)
    (path,) = (zoo.path / "analysis" / "cache").glob("task_plane-*.json")
    text = path.read_text()
    path.write_text({"truncated": text[: len(text) // 2], "empty": "", "null": "null", "list": "[1, 2]",
                     "other entry": json.dumps({"result": {"xs": [0.0]}})}[damage])
    again = task_plane_for(zoo, **args)
    assert len(plane_calls) == 2  # recomputed, not a traceback
    _same_plane(again, good)
    json.loads(path.read_text())  # and the entry was rewritten
    task_plane_for(zoo, **args)
    assert len(plane_calls) == 2


def test_analyze_cli(zoo, capsys):
    from sammerge.cli import main

    args = [str(zoo.path), "--quick", "--quiet", "--n-images", "16"]
    assert main(["analyze", *args]) == 0
    out = capsys.readouterr().out
    assert "λ_max" in out and "mean disentanglement error" in out
    for v in zoo.variants:
        assert v in out
    assert analysis_path(zoo).is_file()
    assert main(["analyze", *args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["zoo_hashes"] == zoo.checkpoint_hashes()
    assert main(["analyze", str(zoo.path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["analyze", str(zoo.path), "--n-images", "1"]) == 2
