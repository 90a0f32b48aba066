"""RegMean and Fisher merging: parity with FusionBench 0.2.33's merge functions on random state dicts and
statistics, and their statistics against independent computations on a real zoo (a plain loop of autograd calls,
the convolution as a matrix product)."""
from __future__ import annotations

import pytest
import torch

from fusionbench_oracle import run_fusionbench
from sammerge.errors import MergeError
from sammerge.merging import get_method

TOL = 1e-5
T = 3
SHAPES = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (4, 6), "c.weight": (4, 2, 3, 3), "n.weight": (4,)}


def _inputs():
    g = torch.Generator().manual_seed(1)
    theta0 = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    tvs = [{k: 0.1 * torch.randn(s, generator=g) for k, s in SHAPES.items()} for _ in range(T)]
    grams = []  # well-conditioned input Grams (X_tᵀX_t / n with n > d), keyed by weight key
    for _ in range(T):
        grams.append({k: (lambda x: x.T @ x / 40)(torch.randn(40, s[1], generator=g))
                      for k, s in SHAPES.items() if k in ("a.weight", "b.weight")})
    fishers = [{k: torch.rand(s, generator=g) ** 3 for k, s in SHAPES.items()} for _ in range(T)]
    return theta0, tvs, grams, fishers


SNIPPET = """
from fusion_bench.method.regmean.regmean import merging_with_regmean_weights
from fusion_bench.method.fisher_merging.fisher_merging import merging_with_fisher_weights
base = load("theta0")
params = {k: [base[k] + load(f"tv{i}")[k] for i in range(T)] for k in base}
grams = [{k[:-len(".weight")]: v for k, v in load(f"gram{i}").items()} for i in range(T)]
for ratio in (1.0, 0.95, 0.5):
    save(f"regmean-{ratio}", merging_with_regmean_weights(params, grams, reduce_non_diagonal_ratio=ratio))
fishers = [load(f"fisher{i}") for i in range(T)]
for normalize in (True, False):
    save(f"fisher-{normalize}", merging_with_fisher_weights(params, fishers, torch.tensor([1.0, 0.5, 2.0]),
                                                             normalize_fisher_weight=normalize, minimal_fisher_weight=1e-6))
"""


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    theta0, tvs, grams, fishers = _inputs()
    inputs = {"theta0": theta0} | {f"tv{i}": tv for i, tv in enumerate(tvs)} | \
        {f"gram{i}": g for i, g in enumerate(grams)} | {f"fisher{i}": f for i, f in enumerate(fishers)}
    return (theta0, tvs, grams, fishers), run_fusionbench(tmp_path_factory.mktemp("fbdata"), f"T = {T}\n" + SNIPPET,
                                                          **inputs)


def _worst(ours, theirs):
    return max(float((ours[k] - theirs[k]).abs().max()) for k in ours)


@pytest.mark.parametrize("ratio", [1.0, 0.95, 0.5])
def test_regmean_matches_fusionbench(oracle, ratio):
    (theta0, tvs, grams, _), theirs = oracle
    ours = get_method("regmean")(theta0, tvs, statistics=grams, reduce_non_diagonal=ratio)
    assert _worst(ours, theirs[f"regmean-{ratio}"]) <= TOL
    mean = {k: theta0[k] + torch.stack([tv[k] for tv in tvs]).mean(0) for k in theta0}
    assert torch.allclose(ours["c.weight"], mean["c.weight"], atol=TOL)  # no statistics: the average
    assert float((ours["a.weight"] - mean["a.weight"]).abs().max()) > 1e-3  # the Grams changed it


@pytest.mark.parametrize("normalize", [True, False])
def test_fisher_matches_fusionbench(oracle, normalize):
    (theta0, tvs, _, fishers), theirs = oracle
    ours = get_method("fisher")(theta0, tvs, statistics=fishers, weights=[1.0, 0.5, 2.0], normalize=normalize)
    assert _worst(ours, theirs[f"fisher-{normalize}"]) <= TOL


def test_regmean_is_the_least_squares_solution():
    """α = 1: the merged W minimises Σ_t ‖X_t (W − W_t)ᵀ‖², so Σ_t G_t (W − W_t)ᵀ = 0; a dead input (zero column
    of every X_t) gets the mean τ, not a singular-matrix error."""
    g = torch.Generator().manual_seed(2)
    theta0 = {"w.weight": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    tvs = [{"w.weight": torch.randn(3, 4, generator=g, dtype=torch.float64)} for _ in range(2)]
    xs = [torch.randn(30, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    for x in xs:
        x[:, 3] = 0.0
    grams = [{"w.weight": x.T @ x / 30} for x in xs]
    w = get_method("regmean")(theta0, tvs, statistics=grams, reduce_non_diagonal=1.0)["w.weight"].double()
    residual = sum(gr["w.weight"] @ (w - theta0["w.weight"] - tv["w.weight"]).T for gr, tv in zip(grams, tvs))
    assert float(residual.abs().max()) < 1e-5
    mean_tau = (tvs[0]["w.weight"] + tvs[1]["w.weight"]) / 2
    assert torch.allclose(w[:, 3] - theta0["w.weight"][:, 3], mean_tau[:, 3], atol=1e-5)


def test_data_methods_need_statistics_of_every_task():
    theta0, tvs, grams, _ = _inputs()
    with pytest.raises(MergeError, match="needs data statistics of every task"):
        get_method("regmean")(theta0, tvs)
    bad = [dict(g, **{"a.weight": torch.eye(3)}) for g in grams]
    with pytest.raises(MergeError, match="statistics of 'a.weight' are \\(3, 3\\).*5 inputs"):
        get_method("regmean")(theta0, tvs, statistics=bad)


# -- the statistics on a real zoo --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo(tiny_zoo):
    from sammerge.zoo import open_zoo
    return open_zoo(tiny_zoo)


def test_input_grams_are_the_patch_grams_of_each_conv(zoo):
    """G[k] = mean over patch rows of p pᵀ, where the conv output equals W.reshape(out, −1) applied to p."""
    from sammerge.merging.modern._data import finetuned_encoder, task_images
    from sammerge.merging.modern.regmean import input_grams
    task, params = zoo.tasks[0], get_method("regmean").validate_params({"images_per_task": 20})
    grams = input_grams(zoo, task, "plain", params)
    encoder = finetuned_encoder(zoo, task, "plain")
    convs = {f"{n}.weight": m for n, m in encoder.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(grams) == set(convs) and len(convs) > 2
    seen = {}
    handles = [m.register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, (i[0].clone(), o.clone())))
               for k, m in convs.items()]
    with torch.no_grad():
        encoder(task_images(zoo, task, params))
    for h in handles:
        h.remove()
    for key, conv in convs.items():
        x, y = seen[key]
        kh, kw = conv.kernel_size
        xp = torch.nn.functional.pad(x, (conv.padding[1],) * 2 + (conv.padding[0],) * 2).double()
        oh, ow = y.shape[2:]
        (sh, sw), (dh, dw) = conv.stride, conv.dilation
        rows = [xp[:, :, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                .reshape(len(x), -1) for i in range(oh) for j in range(ow)]  # patch (i, j) of every image
        patches = torch.cat(rows, 0)
        want = patches.T @ patches / len(patches)
        assert torch.allclose(grams[key], want, rtol=1e-9, atol=1e-9), key
        out = patches @ conv.weight.double().reshape(conv.out_channels, -1).T
        got = torch.stack([y[:, :, i, j] for i in range(oh) for j in range(ow)], 0).reshape(-1, conv.out_channels)
        assert torch.allclose(out, got.double() - (conv.bias.double() if conv.bias is not None else 0), atol=1e-4)


@pytest.mark.parametrize("estimator", ["exact", "batch"])
def test_fisher_against_a_loop_of_autograd_calls(zoo, estimator):
    from sammerge.merging.modern._data import finetuned_encoder, task_images
    from sammerge.merging.modern.fisher import diagonal_fisher
    task = zoo.tasks[1]
    params = get_method("fisher").validate_params({"images_per_task": 6, "estimator": estimator, "batch_size": 4})
    ours = diagonal_fisher(zoo, task, "sam", params)
    encoder, head = finetuned_encoder(zoo, task, "sam"), zoo.heads[task]
    images = task_images(zoo, task, params)
    want = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in encoder.named_parameters()}
    groups = [images[i:i + 4] for i in range(0, 6, 4)] if estimator == "batch" else [img[None] for img in images]
    for group in groups:
        logp = torch.log_softmax(head(encoder(group)), -1)
        if estimator == "batch":
            grads = torch.autograd.grad((logp.exp().sqrt().detach() * logp).sum(), list(encoder.parameters()))
            for (n, _), gr in zip(encoder.named_parameters(), grads):
                want[n] += gr.double() ** 2
            continue
        for y in range(logp.shape[1]):
            grads = torch.autograd.grad(logp[0, y], list(encoder.parameters()), retain_graph=True)
            for (n, _), gr in zip(encoder.named_parameters(), grads):
                want[n] += float(logp[0, y].detach().exp()) * gr.double() ** 2
    for n in want:
        assert torch.allclose(ours[n].double(), want[n] / len(images), rtol=1e-4, atol=1e-9), n
    assert sum(float(v.sum()) for v in ours.values()) > 0


# -- EMR: task-routed ---------------------------------------------------------------------------------------------
EMR_SNIPPET = """
from fusion_bench.method.emr_merging.utils import emr_merge
base = load("theta0")
tvs = [load(f"tv{i}") for i in range(T)]
unified, masks, rescalers = emr_merge(tvs)
for t in range(T):
    save(f"emr{t}", {k: base[k] + unified[k] * masks[k][t] * rescalers[t] for k in base})
"""


def test_emr_matches_fusionbench_task_by_task(tmp_path):
    theta0, tvs, _, _ = _inputs()
    tvs[0]["a.bias"][:] = -tvs[1]["a.bias"]  # ties in the sign election (0 counts as negative)
    inputs = {"theta0": theta0} | {f"tv{i}": tv for i, tv in enumerate(tvs)}
    theirs = run_fusionbench(tmp_path, f"T = {T}\n" + EMR_SNIPPET, **inputs)
    models = get_method("emr")(theta0, tvs)
    assert len(models) == T
    for t, model in enumerate(models):
        assert _worst(model, theirs[f"emr{t}"]) <= TOL
    assert float((models[0]["a.weight"] - models[1]["a.weight"]).abs().max()) > 1e-3  # one model per task


def test_emr_is_task_routed_everywhere(zoo, tmp_path, capsys):
    """Not in the explorer's methods nor in sweeps; the paper table evaluates each task with its own model; the CLI
    writes one file per task."""
    from sammerge.cli import main
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.evaluation.protocol import paper_table
    from sammerge.explorer.service import method_choices
    from sammerge.merging import MergeSpec
    from sammerge.merging.statistics import zoo_table_methods
    from sammerge.io import load_state_dict
    assert "emr" not in method_choices() and "emr" not in zoo_table_methods(zoo, routed=False)
    assert zoo_table_methods(zoo)[-1] == "emr"
    table = paper_table(zoo, methods=["emr"], variants=["plain"], n_test=40)
    row = table[table["method_id"] == "emr"].iloc[0]
    assert "task-routed" in row["method"]
    models = get_method("emr")(zoo.pretrained(), [zoo.task_vector(t, "plain") for t in zoo.tasks])
    for task, model in zip(zoo.tasks, models):  # a plain forward of task t's own model on task t's images
        ev = Evaluator.from_zoo(zoo, split="test", n_per_task=40, tasks=[task])
        assert row[task] == pytest.approx(ev.evaluate(model)[task].accuracy)
    spec = MergeSpec.for_zoo(zoo, "emr", {}, "plain")
    config = tmp_path / "emr.yaml"
    spec.save(config)
    assert main(["merge", str(config), str(tmp_path / "out")]) == 0
    assert "task-routed: one model per task" in capsys.readouterr().out
    for task, model in zip(zoo.tasks, models):
        written = load_state_dict(tmp_path / "out" / f"model-{task}.safetensors")
        assert all(torch.equal(written[k], model[k]) for k in model)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_data_methods_merge_from_a_zoo_on_the_cli(zoo, tmp_path, capsys):
    from sammerge.cli import main
    from sammerge.io import load_state_dict
    from sammerge.merging import MergeSpec, merge_zoo
    spec = MergeSpec.for_zoo(zoo, "regmean", {"lambda": 1.0, "images_per_task": 32}, "sam")
    config = tmp_path / "regmean.yaml"
    spec.save(config)
    assert main(["merge", str(config), str(tmp_path / "no")]) != 0
    err = capsys.readouterr().err
    assert "reads unlabeled images of every task" in err and "--zoo" in err and not (tmp_path / "no").exists()
    assert main(["merge", str(config), str(tmp_path / "out"), "--zoo", str(zoo.path), "--quiet"]) == 0
    written = load_state_dict(tmp_path / "out" / "model.safetensors")
    want = merge_zoo(zoo, spec)
    assert all(torch.allclose(written[k], want[k]) for k in want)
    assert "no mergekit equivalent" in capsys.readouterr().out
