"""Zoo analytics: the stored analysis, its invalidation by checkpoint hashes, on-demand caches, the CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sammerge.analytics.report import (analysis_path, analyze_zoo, cross_task_linearity_for, disentanglement_for,
                               interpolation_for, load_analysis, random_plane_for, sharpness_for, sharpness_table,
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
    from sammerge.training.presets import get_preset
    from sammerge.zoo import build_zoo

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


def test_analyze_store_load_and_invalidate(zoo):
    stages = []
    result = analyze_zoo(zoo, quick=True, progress=lambda s, d, t: stages.append((s, d, t)), **SMALL)
    assert stages[-1][1] == stages[-1][2]
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
    params = {k: v.clone() for k, v in zoo.finetuned(rec.task, rec.variant).items()}
    first = next(iter(params))
    params[first] = params[first] + 1e-3
    save_state_dict(params, zoo.path / rec.file)
    manifest = json.loads((zoo.path / "zoo.json").read_text())
    for c in manifest["checkpoints"]:
        if c["file"] == rec.file:
            c["sha256"] = sha256_file(zoo.path / rec.file)
    (zoo.path / "zoo.json").write_text(json.dumps(manifest))
    changed = open_zoo(zoo.path)
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
    plane = task_plane_for(zoo, t1, t2, v, n=3, n_per_task=16)
    assert plane.loss[t1].shape == (3, 3) and plane.markers[t1] == (1.0, 0.0)
    cache_files = list((zoo.path / "analysis" / "cache").glob("task_plane-*.json"))
    assert len(cache_files) == 1
    marked = task_plane_for(zoo, t1, t2, v, n=3, n_per_task=16, merge_point=(0.4, 0.4))
    np.testing.assert_allclose(marked.loss[t1], plane.loss[t1])
    assert marked.markers["merge"] == (0.4, 0.4)
    assert len(list((zoo.path / "analysis" / "cache").glob("task_plane-*.json"))) == 1

    rp = random_plane_for(zoo, t1, v, n=3, n_per_task=16)
    assert rp.kind == "random" and rp.loss[t1].shape == (3, 3)

    theta0 = zoo.pretrained()
    merged = {k: theta0[k] + 0.5 * (zoo.task_vector(t1, v)[k] + zoo.task_vector(t2, v)[k]) for k in theta0}
    curves = interpolation_for(zoo, t1, v, merged=merged, alphas=[0, 1], n_per_task=16)
    assert curves["finetuned"].loss[t1].shape == (2,)
    assert set(curves["merged"].loss) == set(zoo.tasks)

    d = disentanglement_for(zoo, t1, t2, v, n=2, n_per_task=16)
    assert d.xi.shape == (2, 2) and d.xi[0, 0] == 0.0

    ctl = cross_task_linearity_for(zoo, t1, t2, v, n_images=4, alphas=[0, 0.5, 1])
    assert set(ctl["blocks"]) == {"stem", "layer1", "layer2", "layer3", "layer4"}

    s = sharpness_for(zoo, merged, t1, n_images=16, eig_iters=3, trace_samples=2, m=8, avg_samples=2)
    s2 = sharpness_for(zoo, merged, t1, n_images=16, eig_iters=3, trace_samples=2, m=8, avg_samples=2)
    assert s == s2 and np.isfinite(s["top_eigenvalue"])


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
