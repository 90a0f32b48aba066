"""Linearized fine-tuning: f_lin against a dense-Jacobian Taylor expansion, a linearized zoo end to end."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from sammerge.evaluation.evaluator import Evaluator
from sammerge.training import train as _train
from sammerge.models.linearize import LinearizedEncoder, linearized_call
from sammerge.models.model import EncoderConfig, Head, create_encoder, encoder_params
from sammerge.models.presets import FinetuneRecipe, VariantSpec, get_preset

MICRO = EncoderConfig(channels=(4, 4, 4, 8), stem_width=4, gn_groups=2, stem_stride=2, output_stride=16)


def _micro(seed=0):
    torch.manual_seed(seed)
    enc = create_encoder(MICRO).eval()
    theta0 = encoder_params(enc)
    return enc, theta0


def _dense_taylor(enc, theta0, params, x):
    """f(θ0) + J (θ − θ0) with J the dense Jacobian of the flattened output w.r.t. the flattened parameters."""
    keys = list(theta0)
    shapes = [theta0[k].shape for k in keys]
    flat0 = torch.cat([theta0[k].reshape(-1) for k in keys]).double()

    def f(flat):
        parts, start = {}, 0
        for k, s in zip(keys, shapes):
            n = int(torch.tensor(s).prod()) if len(s) else 1
            parts[k] = flat[start:start + n].reshape(s)
            start += n
        return torch.func.functional_call(enc.double(), parts, (x.double(),)).reshape(-1)

    jac = torch.autograd.functional.jacobian(f, flat0)  # [N·D, P]
    delta = torch.cat([(params[k] - theta0[k]).reshape(-1) for k in keys]).double()
    out = f(flat0) + jac @ delta
    enc.float()
    return out.reshape(len(x), -1).float()


def test_linearized_equals_dense_first_order_taylor():
    enc, theta0 = _micro()
    g = torch.Generator().manual_seed(1)
    params = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in theta0.items()}
    x = torch.randn(3, 1, 16, 16, generator=g)
    ours = linearized_call(enc, theta0, params, x)
    reference = _dense_taylor(enc, theta0, params, x)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-4), (ours - reference).abs().max()
    # and it is not the plain forward at θ (the model is not linear)
    plain = torch.func.functional_call(enc, params, (x,))
    assert (plain - ours).abs().max() > 1e-3


def test_linearized_at_theta0_is_the_plain_forward():
    enc, theta0 = _micro()
    x = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(linearized_call(enc, theta0, theta0, x), enc(x), atol=1e-6)
        wrapped = LinearizedEncoder(enc, theta0)
        assert torch.allclose(wrapped(x), enc(x), atol=1e-6)
    assert list(wrapped.state_dict()) == list(enc.state_dict())


class _Data:
    def __init__(self, n=96, classes=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        self.images = torch.randn(n, 1, 16, 16, generator=g) + self.labels.float().view(-1, 1, 1, 1)

    def noisy_batch(self, idx, generator):
        return self.images[idx]


@pytest.mark.parametrize("variant", [VariantSpec(name="plain"), VariantSpec(name="sam", sam=True, rho=0.05),
                                     VariantSpec(name="asam", sam=True, rho=0.5, adaptive=True)])
def test_linearized_finetuning_trains_theta_through_f_lin(variant):
    enc, theta0 = _micro()
    data = _Data()
    head = Head(torch.randn(3, 8, generator=torch.Generator().manual_seed(3)), torch.zeros(3))
    wrapped = LinearizedEncoder(enc, theta0)
    recipe = FinetuneRecipe(lr=3e-2, steps=25, batch_size=32, fresh_noise=False)

    def lin_loss():
        with torch.no_grad():
            return float(F.cross_entropy(head(wrapped(data.images)), data.labels))

    before = lin_loss()
    losses = _train.finetune(wrapped, head, data, recipe, variant, torch.Generator().manual_seed(0))
    after = lin_loss()
    assert len(losses) == 25 and after < before - 0.05
    trained = encoder_params(enc)  # θ lives in the wrapped encoder's own parameters
    assert any((trained[k] - theta0[k]).abs().max() > 1e-4 for k in theta0)
    # the linearized loss is not the plain model's loss at the trained θ
    with torch.no_grad():
        plain = float(F.cross_entropy(head(enc(data.images)), data.labels))
    assert abs(plain - after) > 1e-4


def test_trainable_last_stage_leaves_other_parameters_at_theta0():
    enc, theta0 = _micro()
    data = _Data()
    head = Head(torch.randn(3, 8, generator=torch.Generator().manual_seed(3)), torch.zeros(3))
    recipe = FinetuneRecipe(lr=3e-2, steps=5, batch_size=32, fresh_noise=False, trainable="last_stage")
    _train.finetune(LinearizedEncoder(enc, theta0), head, data, recipe, VariantSpec(name="plain"),
                    torch.Generator().manual_seed(0))
    trained = encoder_params(enc)
    changed = {k for k in theta0 if not torch.equal(trained[k], theta0[k])}
    assert changed and all(k.startswith("layer4.") for k in changed)


def test_new_recipe_fields_keep_old_fingerprints():
    recipe = get_preset("demo")
    old_dump = recipe.model_dump(mode="json")
    for key in ("linearized", "trainable", "precision"):
        del old_dump["finetune"][key]
    for variant in old_dump["variants"]:
        del variant["seed"]  # added with the seed dimension (tests/test_precision.py checks every preset)
    old = hashlib.sha256(json.dumps({"recipe": old_dump, "data": "d"}, sort_keys=True).encode()).hexdigest()
    assert recipe.fingerprint("d") == old
    lin = recipe.model_copy(update={"finetune": recipe.finetune.model_copy(update={"linearized": True})})
    assert lin.fingerprint("d") != old


@pytest.fixture(scope="module")
def linear_zoo(tmp_path_factory):
    from sammerge.training.build import build_zoo
    recipe = get_preset("tiny")
    recipe = recipe.model_copy(update={"tasks": ["digits", "symbols"],
                                       "finetune": recipe.finetune.model_copy(update={"linearized": True})})
    from sammerge.zoo import open_zoo
    out = tmp_path_factory.mktemp("linzoo") / "lin"
    build_zoo(recipe, out)
    return open_zoo(out)


def test_linearized_zoo_records_flag_and_scores_linearized(linear_zoo):
    assert linear_zoo.manifest.recipe.finetune.linearized is True
    theta0 = linear_zoo.pretrained()
    task = "digits"
    split = linear_zoo.split(task, "test")
    theta = linear_zoo.finetuned(task, "plain")
    head = linear_zoo.heads[task]
    enc = linear_zoo.create_encoder()
    with torch.no_grad():
        lin_acc = float((head(linearized_call(enc, theta0, theta, split.images)).argmax(1) == split.labels).float().mean())
    # the manifest's individual test accuracy is that of f_lin, measured on the whole test split
    assert linear_zoo.manifest.checkpoint(task, "plain").accuracy.test == pytest.approx(lin_acc, abs=1e-6)


def test_linearized_zoo_merge_equals_hand_taylor(linear_zoo):
    theta0 = linear_zoo.pretrained()
    ev = Evaluator.from_zoo(linear_zoo, split="val", n_per_task=8, device="cpu")
    assert ev.linearize_at is not None
    lams = {"digits": 0.3, "symbols": 0.7}
    tvs = {t: linear_zoo.task_vector(t, "plain") for t in lams}
    merged = {k: theta0[k] + sum(lams[t] * tvs[t][k] for t in lams) for k in theta0}
    feats = ev.features(merged)
    enc = linear_zoo.create_encoder()
    x = ev.images
    # by hand: f(θ0) + Σ_t λ_t J τ_t, each J τ_t from the dense Jacobian
    base = _dense_taylor(enc, theta0, theta0, x)
    by_hand = base + sum(lams[t] * (_dense_taylor(enc, theta0, {k: theta0[k] + tvs[t][k] for k in theta0}, x) - base)
                         for t in lams)
    assert torch.allclose(feats, by_hand, atol=1e-4, rtol=1e-4), (feats - by_hand).abs().max()
    # batched (vmap) evaluation agrees with the single pass
    [r_many] = ev.evaluate_many([merged], strategy="vmap")
    r_one = Evaluator.from_zoo(linear_zoo, split="val", n_per_task=8, device="cpu").evaluate(merged)
    assert {t: r.accuracy for t, r in r_many.items()} == {t: r.accuracy for t, r in r_one.items()}


def test_linearized_calls_from_several_threads_at_once_agree_with_one_thread():
    """torch's forward-mode AD has one dual level per process: without sammerge's lock, concurrent jvps fail
    ("no level exists") — as the explorer's evaluation and a background preview job once did."""
    import threading

    from sammerge.models.linearize import linearized_call
    from sammerge.models.model import create_encoder
    from sammerge.models.presets import get_preset

    torch.manual_seed(0)
    encoder = create_encoder(get_preset("tiny").encoder).eval()
    theta0 = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    params = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in theta0.items()}
    x = torch.randn(32, 1, 16, 16)
    reference = linearized_call(encoder, theta0, params, x).detach()
    problems = []

    def work():
        try:
            for _ in range(20):
                with torch.no_grad():
                    out = linearized_call(encoder, theta0, params, x)
                if not torch.allclose(out, reference, atol=1e-5):
                    problems.append("different output")
        except RuntimeError as exc:
            problems.append(str(exc)[:120])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
