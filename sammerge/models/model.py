"""The image encoder (a timm ResNet with GroupNorm, or any timm architecture) and per-task linear heads.

The encoder is the part that is fine-tuned and merged; heads are fitted once on the pretrained
encoder (linear probe) and then frozen, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from sammerge.errors import ConfigError
from sammerge.models import lite0 as _lite0


class EncoderConfig(BaseModel):
    """Architecture of the encoder, stored in every zoo manifest so a zoo rebuilds its model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["resnet_gn"] = "resnet_gn"
    layers: tuple[int, ...] = (1, 1, 1, 1)
    channels: tuple[int, ...] = (16, 32, 64, 96)
    stem_width: int = 16
    stem_stride: int = Field(1, ge=1, le=2)
    gn_groups: int = Field(8, ge=1)
    output_stride: Literal[8, 16, 32] = 32  # timm's dilation switch: 16 keeps the last stage at stride 1
    in_chans: int = 1
    image_size: int = 16

    @field_validator("channels")
    @classmethod
    def _channels_divisible(cls, channels: tuple[int, ...]) -> tuple[int, ...]:
        if not channels or any(c <= 0 for c in channels):
            raise ValueError("channels must be positive")
        return channels

    @property
    def embed_dim(self) -> int:
        return self.channels[-1]


class _GroupNorm(nn.GroupNorm):
    """GroupNorm taking the channel count first (the signature timm's ``norm_layer`` expects)."""

    def __init__(self, num_channels: int, num_groups: int = 8, **kwargs) -> None:
        groups = num_groups
        while num_channels % groups:
            groups -= 1
        super().__init__(groups, num_channels, **kwargs)


class TimmEncoderConfig(BaseModel):
    """A timm architecture: ``timm.create_model(model, pretrained=False, num_classes=0, **kwargs)``.

    Imported zoos use it (e.g. ``vit_base_patch32_clip_quickgelu_224`` with ``num_classes=512`` keeping CLIP's
    projection as ``head``). ``embed_dim`` is the feature size the heads read.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["timm"] = "timm"
    model: str = Field(min_length=1)
    kwargs: dict = {}
    embed_dim: int = Field(ge=1)
    image_size: int = Field(ge=1)
    in_chans: int = 3


class Lite0TailConfig(BaseModel):
    """A zoo encoder that is stages ``start``… of BN-folded EfficientNet-Lite0 on ``image_size`` px images; its
    inputs are the activations of the stem and stages < ``start`` (shape ``input_shape`` per image)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["lite0_tail"] = "lite0_tail"
    start: int = Field(3, ge=1, le=len(_lite0.STAGES) - 1)
    image_size: int = Field(32, ge=8)
    embed_dim: int = _lite0.EMBED_DIM

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the prefix's output: TF "same" convs give ⌈n / stride⌉ per stride."""
        size = -(-self.image_size // 2)  # the stem's stride
        for _, _, _, stride, _, _ in _lite0.STAGES[:self.start]:
            size = -(-size // stride)
        return _lite0.STAGES[self.start - 1][5], size, size


AnyEncoderConfig = EncoderConfig | TimmEncoderConfig | Lite0TailConfig


def create_timm_encoder(cfg: TimmEncoderConfig) -> nn.Module:
    """``timm.create_model(cfg.model, pretrained=False, num_classes=0, **cfg.kwargs)`` (nothing downloaded)."""
    import timm

    kwargs = {"num_classes": 0, **cfg.kwargs}
    try:
        return timm.create_model(cfg.model, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"encoder: timm cannot build '{cfg.model}' with {kwargs} ({exc})".replace("\n", " ")) from None


def without_fused_attention(encoder: nn.Module) -> nn.Module:
    """Switch timm's fused attention (``F.scaled_dot_product_attention``) off in every attention block, in place.

    Same outputs, slower; needed where derivatives of derivatives are taken (Hessian-vector products by
    forward-over-reverse: torch has no forward-mode AD for the fused CPU kernel). Returns ``encoder``.
    """
    for module in encoder.modules():
        if isinstance(getattr(module, "fused_attn", None), bool):
            module.fused_attn = False
    return encoder


def create_encoder(cfg: AnyEncoderConfig | None = None) -> nn.Module:
    """The encoder of a zoo: :func:`create_timm_encoder` for ``arch: timm``, EfficientNet-Lite0's tail for
    ``arch: lite0_tail`` (:mod:`sammerge.models.lite0_tail`), else the ResNet-GN below.

    timm ResNet (BasicBlock) with GroupNorm, a 3×3 stem, no max-pool, no classifier: x ↦ features [N, D]."""
    from functools import partial

    from timm.models.resnet import BasicBlock, ResNet

    cfg = cfg or EncoderConfig()
    if isinstance(cfg, TimmEncoderConfig):
        return create_timm_encoder(cfg)
    if isinstance(cfg, Lite0TailConfig):
        from sammerge.models.lite0_tail import create_lite0_tail
        return create_lite0_tail(cfg)
    if len(cfg.layers) != len(cfg.channels):
        raise ConfigError(f"encoder config: {len(cfg.layers)} layers but {len(cfg.channels)} channel widths")
    if cfg.stem_width % 2:
        raise ConfigError(f"encoder config: stem_width {cfg.stem_width} must be even")
    for width in (cfg.stem_width, *cfg.channels):
        if width % cfg.gn_groups:
            raise ConfigError(f"encoder config: width {width} not divisible by gn_groups={cfg.gn_groups}")
    norm = partial(_GroupNorm, num_groups=cfg.gn_groups)
    model = ResNet(
        block=BasicBlock, layers=list(cfg.layers), channels=tuple(cfg.channels), num_classes=0,
        in_chans=cfg.in_chans, output_stride=cfg.output_stride, stem_width=cfg.stem_width // 2, stem_type="deep", norm_layer=norm,
        zero_init_last=True,
    )
    # timm's deep stem makes layer1 expect stem_width input channels; swap it for one 3×3 conv.
    model.conv1 = nn.Conv2d(cfg.in_chans, cfg.stem_width, 3, stride=cfg.stem_stride, padding=1, bias=False)
    model.bn1 = norm(cfg.stem_width)
    model.maxpool = nn.Identity()
    return model


@dataclass(frozen=True)
class Head:
    """A frozen linear classifier for one task: logits = f @ weight.T + bias, with f = features, or
    f = features / ‖features‖₂ when ``normalize`` (CLIP zero-shot and task_vectors heads)."""

    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]
    normalize: bool = False

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            features = features / features.norm(dim=-1, keepdim=True)
        return torch.nn.functional.linear(features, self.weight, self.bias)

    def to(self, device) -> "Head":
        return Head(self.weight.to(device), self.bias.to(device), self.normalize)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])


def heads_to_state_dict(heads: Mapping[str, Head]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for task, head in heads.items():
        out[f"{task}.weight"] = head.weight
        out[f"{task}.bias"] = head.bias
    return out


def heads_from_state_dict(state_dict: Mapping[str, torch.Tensor], tasks: list[str], source: str,
                          normalize: Mapping[str, bool] | None = None) -> dict[str, Head]:
    from sammerge.errors import CheckpointError

    heads = {}
    for task in tasks:
        try:
            heads[task] = Head(state_dict[f"{task}.weight"], state_dict[f"{task}.bias"],
                               bool((normalize or {}).get(task, False)))
        except KeyError as exc:
            raise CheckpointError(f"{source}: no head for task '{task}' (missing key {exc.args[0]!r})") from exc
    return heads


def encoder_params(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the encoder's state dict (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}


def pick_device(device: str | None = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device: unknown device '{device}'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return dev
