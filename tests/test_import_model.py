"""timm encoders of imported zoos: config round trip, CLIP heads, fused attention off for double backward."""
from __future__ import annotations

import pytest
import timm
import torch

from sammerge.analytics.sharpness import hvp, task_loss_fn
from sammerge.models.model import Head, TimmEncoderConfig, create_encoder, without_fused_attention

CFG = TimmEncoderConfig(model="vit_base_patch32_clip_224", embed_dim=16, image_size=32,
                        kwargs={"num_classes": 16, "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                                "num_heads": 2})


def test_timm_config_builds_the_named_model():
    torch.manual_seed(0)
    enc = create_encoder(CFG)
    torch.manual_seed(0)
    ref = timm.create_model("vit_base_patch32_clip_224", pretrained=False, **CFG.kwargs)
    assert enc.state_dict().keys() == ref.state_dict().keys()
    assert TimmEncoderConfig.model_validate(CFG.model_dump()) == CFG


def test_normalized_head_by_hand():
    w, b = torch.randn(3, 4), torch.randn(3)
    f = torch.randn(5, 4)
    expected = (f / f.norm(dim=1, keepdim=True)) @ w.T + b
    torch.testing.assert_close(Head(w, b, normalize=True)(f), expected)
    torch.testing.assert_close(Head(w, b)(f), f @ w.T + b)
    assert Head(w, b, True).to("cpu").normalize


def test_hessian_vector_product_needs_plain_attention():
    torch.manual_seed(0)
    enc = create_encoder(CFG).eval()
    params = {k: v.detach() for k, v in enc.state_dict().items()}
    head = Head(torch.randn(3, 16), torch.zeros(3), normalize=True)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        fused = enc(x)
    plain_enc = without_fused_attention(create_encoder(CFG).eval())
    plain_enc.load_state_dict(params)
    with torch.no_grad():
        torch.testing.assert_close(plain_enc(x), fused, atol=1e-5, rtol=1e-5)
    v = {k: torch.randn_like(t) for k, t in params.items()}
    if any(getattr(m, "fused_attn", False) for m in enc.modules()):
        with pytest.raises(Exception):
            hvp(task_loss_fn(enc, head, x, y), params, v)
    hv = hvp(task_loss_fn(plain_enc, head, x, y), params, v)
    # finite-difference check of H v along v: (∇f(θ + εv) − ∇f(θ − εv)) / 2ε
    loss = task_loss_fn(plain_enc, head, x, y)
    eps = 1e-3

    def grad_at(sign):
        p = {k: (params[k] + sign * eps * v[k]).double().requires_grad_() for k in params}
        plain_enc.double()
        g = torch.autograd.grad(loss({k: t for k, t in p.items()}), list(p.values()), allow_unused=True)
        plain_enc.float()
        return g
    head64 = Head(head.weight.double(), head.bias.double(), True)
    loss = task_loss_fn(plain_enc, head64, x.double(), y)
    g_plus, g_minus = grad_at(1), grad_at(-1)
    fd = sum(float(((gp - gm) / (2 * eps) * v[k].double()).sum()) for k, gp, gm in zip(params, g_plus, g_minus)
             if gp is not None)
    vhv = sum(float((hv[k].double() * v[k].double()).sum()) for k in hv)
    assert vhv == pytest.approx(fd, rel=2e-2, abs=1e-3)


def test_a_format_1_manifest_without_the_new_fields_opens_unchanged(tiny_zoo_copy):
    """zoo.json as sammerge wrote it before imports existed (no head_normalize / source / images keys)."""
    import json
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.zoo import open_zoo
    path = tiny_zoo_copy / "zoo.json"
    raw = json.loads(path.read_text())
    for key in ("pretrained_source", "images", "source"):
        raw.pop(key, None)
    for task in raw["tasks"]:
        task.pop("head_normalize", None)
    for record in raw["checkpoints"]:
        record.pop("source", None)
    path.write_text(json.dumps(raw))
    zoo = open_zoo(tiny_zoo_copy, verify=True)
    assert zoo.manifest.format_version == 1 and zoo.manifest.recipe is not None and not zoo.manifest.imported
    assert not any(h.normalize for h in zoo.heads.values())
    assert zoo.original_files() == {}
    assert len(zoo.split(zoo.tasks[0], "train")) > 0  # the glyph benchmark, train split included
    Evaluator.from_zoo(zoo, n_per_task=8).evaluate(zoo.pretrained())


@pytest.mark.parametrize("name", ["vit_base_patch32_clip_quickgelu_224", "vit_base_patch32_clip_224",
                                  "vit_base_patch16_clip_quickgelu_224", "vit_large_patch14_clip_224"])
def test_clip_architecture_names_the_real_models(name):
    """Real CLIP sizes map back to timm's own model names (shapes only: built on the meta device)."""
    from sammerge.importing.formats import clip_architecture
    with torch.device("meta"):
        state = timm.create_model(name, pretrained=False, num_classes=768 if "large" in name else 512).state_dict()
    assert clip_architecture(state, quick_gelu="quickgelu" in name) == (name, {"num_classes": 768 if "large" in name else 512})
