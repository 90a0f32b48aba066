"""Layer groups from parameter names and per-layer coefficients through merges, specs, URLs and mergekit."""
from __future__ import annotations

import subprocess

import pytest

import mergekit_oracle
import torch

from sammerge.errors import ConfigError, MergeError
from sammerge.merging import (MergeSpec, from_mergekit_yaml, get_method, linear_combination, merge_zoo,
                              resolve_and_merge, to_mergekit_yaml)
from sammerge.merging.layers import group_of, key_coefficients, layer_groups
from sammerge.merging.common import ties_parts

RESNET_KEYS = ["bn1.bias", "bn1.weight", "conv1.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
               "layer1.1.conv2.weight", "layer2.0.downsample.0.weight", "layer10.0.conv1.weight", "fc.weight"]
VIT_KEYS = ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.10.mlp.fc1.bias",
            "blocks.2.norm1.weight", "norm.weight", "fc_norm.bias", "head.weight", "head.bias"]


def test_groups_of_a_resnet_and_a_vit():
    assert layer_groups(RESNET_KEYS) == {
        "stem": ["bn1.bias", "bn1.weight", "conv1.weight"], "layer1.0": ["layer1.0.bn1.weight", "layer1.0.conv1.weight"],
        "layer1.1": ["layer1.1.conv2.weight"], "layer2.0": ["layer2.0.downsample.0.weight"],
        "layer10.0": ["layer10.0.conv1.weight"], "head": ["fc.weight"]}
    groups = layer_groups(VIT_KEYS)
    assert list(groups) == ["stem", "blocks.0", "blocks.2", "blocks.10", "head"]  # numeric, not string, order
    assert groups["stem"] == ["cls_token", "pos_embed", "patch_embed.proj.weight"]
    assert groups["head"] == ["norm.weight", "fc_norm.bias", "head.weight", "head.bias"]
    assert group_of("stages.1.blocks.2.conv_dw.weight") == "stages.1"


def test_groups_of_real_timm_models():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    names = list(layer_groups(vit.state_dict()))
    assert names == ["stem"] + [f"blocks.{i}" for i in range(12)] + ["head"]  # head: the final norm
    lite = layer_groups(timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict())
    assert list(lite) == ["stem"] + [f"blocks.{i}" for i in range(7)] + ["head"]
    assert {k.split(".")[0] for k in lite["stem"]} == {"conv_stem", "bn1"}
    assert {k.split(".")[0] for k in lite["head"]} == {"conv_head", "bn2"}  # the 1×1 head conv after the stages


def test_key_coefficients_and_unknown_groups():
    coef = key_coefficients(RESNET_KEYS, {"stem": 0.5, "layer1.0": 2.0}, default=1.0)
    assert coef["conv1.weight"] == 0.5 and coef["layer1.0.conv1.weight"] == 2.0 and coef["fc.weight"] == 1.0
    with pytest.raises(MergeError, match="'layer9.0'.*this model has: stem, layer1.0"):
        key_coefficients(RESNET_KEYS, {"layer9.0": 1.0})


def _toy():
    torch.manual_seed(0)
    keys = ["conv1.weight", "layer1.0.conv1.weight", "layer2.0.conv1.weight", "fc.weight"]
    pre = {k: torch.randn(4, 3) for k in keys}
    pre["steps"] = torch.tensor(3)
    tvs = [{k: torch.randn(4, 3) for k in keys} for _ in range(3)]
    return keys, pre, tvs


def test_per_layer_merge_equals_hand_built_sum():
    keys, pre, tvs = _toy()
    lw = [{"stem": 0.2, "layer1.0": 0.7}, None, {"layer2.0": 0.0, "head": 1.5}]
    w = [0.5, 1.0, 2.0]
    group = {"conv1.weight": "stem", "layer1.0.conv1.weight": "layer1.0", "layer2.0.conv1.weight": "layer2.0",
             "fc.weight": "head"}
    out = get_method("task_arithmetic")(pre, tvs, weights=w, layer_weights=lw, **{"lambda": 0.8})
    for k in keys:  # θ0 + λ Σ_t w_t s_{t,g(k)} τ_t, by hand
        want = pre[k] + 0.8 * sum(wt * ((l or {}).get(group[k], 1.0)) * tv[k] for wt, l, tv in zip(w, lw, tvs))
        assert torch.allclose(out[k], want, atol=1e-6), k
    assert out["steps"].item() == 3
    # linear_combination takes per-key coefficients directly
    per_key = [{k: 0.8 * wt * (l or {}).get(group[k], 1.0) for k in keys} for wt, l in zip(w, lw)]
    direct = linear_combination(pre, tvs, per_key)
    assert all(torch.allclose(direct[k], out[k], atol=1e-6) for k in keys)
    with pytest.raises(MergeError, match="no coefficient for key"):
        linear_combination(pre, tvs, [{"fc.weight": 1.0}, 1.0, 1.0])
    with pytest.raises(MergeError, match="unknown layer group"):
        get_method("task_arithmetic")(pre, tvs, layer_weights=[{"blocks.3": 1.0}, None, None])
    with pytest.raises(MergeError, match="no per-task weights"):
        get_method("model_stock")(pre, tvs, layer_weights=[{"stem": 1.0}, None, None])


def test_ties_unweighted_vote_equals_weighted_sum_of_ties_parts():
    keys, pre, tvs = _toy()
    parts = ties_parts(pre, tvs, density=0.5)
    lw = [{"stem": 0.3, "head": 0.9}, {"layer1.0": 0.1}, None]
    out = get_method("ties")(pre, tvs, density=0.5, normalize=False, vote="unweighted", weights=[0.4, 0.6, 0.8],
                             layer_weights=lw, **{"lambda": 1.0})
    group = {"conv1.weight": "stem", "layer1.0.conv1.weight": "layer1.0", "layer2.0.conv1.weight": "layer2.0",
             "fc.weight": "head"}
    for k in keys:
        want = pre[k] + sum(w * (l or {}).get(group[k], 1.0) * p[k] for w, l, p in zip([0.4, 0.6, 0.8], lw, parts))
        assert torch.allclose(out[k], want, atol=1e-6), k
    # the parts by hand for one tensor: keep 6 of 12 entries by |τ|, elect sign of the sum, keep agreeing entries
    k = "fc.weight"
    trimmed = []
    for tv in tvs:
        flat = tv[k].reshape(-1)
        mask = torch.zeros(12, dtype=torch.bool)
        mask[flat.abs().argsort(descending=True, stable=True)[:6]] = True
        trimmed.append(torch.where(mask, flat, torch.zeros(())))
    gamma = torch.where(sum(trimmed) >= 0, 1.0, -1.0)
    for p, t in zip(parts, trimmed):
        assert torch.equal(p[k].reshape(-1), t * (torch.sign(t) == gamma))


def test_spec_layer_weights_round_trip(tiny_zoo):
    from sammerge.zoo import open_zoo
    zoo = open_zoo(tiny_zoo)
    lw = {"digits": {"stem": 0.1, "layer3.0": 0.6}, "symbols": {"layer1.0": 1.2}}
    spec = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.9}, {"digits": "sam", "symbols": "plain"},
                             {"digits": 0.5}, layer_weights=lw)
    assert spec.has_layer_weights and spec.layer_weights == lw
    assert spec.coefficient("digits", "layer3.0") == pytest.approx(0.9 * 0.5 * 0.6)
    back, warnings = MergeSpec.from_query(spec.to_query(), zoo)
    assert not warnings and back.key() == spec.key()
    again = MergeSpec.from_json(spec.to_json())
    assert again.key() == spec.key() and MergeSpec.from_yaml(spec.to_yaml()).key() == spec.key()
    assert again.method_kwargs["layer_weights"] == [lw["digits"], lw["symbols"]]
    rebased, _ = again.rebased(zoo)
    assert rebased.key() == spec.key()
    # the merge differs from the same spec without layer weights (they are applied) and equals the hand sum
    merged = merge_zoo(zoo, spec)
    theta0 = zoo.pretrained()
    tvs = {t: zoo.task_vector(t, v) for t, v in spec.variants.items()}
    for k, base in theta0.items():
        if not base.is_floating_point():
            continue
        g = group_of(k)
        want = base + 0.9 * (0.5 * lw["digits"].get(g, 1.0) * tvs["digits"][k]
                             + 1.0 * lw["symbols"].get(g, 1.0) * tvs["symbols"][k])
        assert torch.allclose(merged[k], want, atol=1e-6), k
    # bad links are warned about, not raised
    q = dict(spec.to_query(), **{"lw.digits": "stem:0.1,nope:2,layer1.0:nan", "lw.greek": "stem:1"})
    back, warnings = MergeSpec.from_query(q, zoo)
    assert back.layer_weights["digits"] == {"stem": 0.1}
    assert any("'nope'" in w or "digits:nope" in w for w in warnings) and any("greek" in w for w in warnings)
    # switching to a method without per-task weights drops them; a method that has none rejects them
    assert not spec.with_method("model_stock").has_layer_weights
    with pytest.raises(ConfigError, match="tasks.0.layer_weights"):
        MergeSpec.from_dict({**spec.to_dict(), "method": "model_stock", "params": {}})
    with pytest.raises(ConfigError, match="layer_weights"):
        MergeSpec.from_dict({**spec.to_dict(), "tasks": [{**spec.to_dict()["tasks"][0],
                                                          "layer_weights": {"stem": float("inf")}}]})


def test_mergekit_export_of_layer_weights_round_trips(tiny_zoo):
    from sammerge.zoo import open_zoo
    zoo = open_zoo(tiny_zoo)
    spec = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 1.0}, "sam", {"digits": 0.8, "symbols": 0.5},
                             layer_weights={"digits": {"stem": 0.25, "layer2.0": 0.5}, "latin_upper": {"layer4.0": 0.0}})
    text = to_mergekit_yaml(spec)
    assert "filter: layer2.0." in text and "per-filter" in text
    back = from_mergekit_yaml(text)
    merged, _ = resolve_and_merge(back)
    ours = merge_zoo(zoo, spec)
    assert all(torch.allclose(ours[k], merged[k], atol=1e-6) for k in ours)
    ties = MergeSpec.for_zoo(zoo, "ties", {"lambda": 1.0, "normalize": False, "vote": "unweighted"}, "sam",
                             layer_weights={"digits": {"stem": 0.3}})
    assert "SEMANTICS DIFFER: vote: unweighted" in to_mergekit_yaml(ties)


@pytest.mark.parametrize("method,params", [("task_arithmetic", {"lambda": 0.9}), ("ties", {"density": 0.5}),
                                           ("weight_average", {})])
def test_mergekit_pytorch_gives_same_per_layer_weights(tiny_zoo, tmp_path, method, params):
    """mergekit-pytorch on the exported per-filter YAML gives our per-layer merge (skips without mergekit unless
    SAMMERGE_MERGEKIT / SAMMERGE_REQUIRE_MERGEKIT say it must be there)."""
    exe = mergekit_oracle.mergekit_pytorch()
    from safetensors.torch import load_file
    from sammerge.zoo import open_zoo
    zoo = open_zoo(tiny_zoo)
    spec = MergeSpec.for_zoo(zoo, method, params, "plain", {"digits": 0.7, "symbols": 1.3},
                             layer_weights={"digits": {"stem": 0.2, "layer1.0": 0.6, "layer4.0": 1.4},
                                            "latin_upper": {"layer2.0": 0.1}})
    merged, resolved = resolve_and_merge(spec)
    (tmp_path / "mk.yml").write_text(to_mergekit_yaml(resolved))
    proc = subprocess.run([exe, str(tmp_path / "mk.yml"), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = load_file(tmp_path / "out" / "model.safetensors")
    for k, v in merged.items():
        if v.is_floating_point():
            assert torch.allclose(theirs[k].float(), v, atol=1e-6, rtol=1e-5), k
