"""EfficientNet-Lite0's tail as a zoo encoder: the frozen prefix's activations ↦ pooled features [N, 1280].

Fine-tuning only the stages from ``start`` on (and the 1×1 head convolution) leaves the stem and the earlier stages
at θ0, so their output for an image never changes: it is computed once per image (:func:`prefix_activations`; a zoo
stores the prefix's weights and the images, and computes it when opened) and every fine-tuning step, merge and
evaluation runs the tail alone. The tail's
parameter names are the full encoder's (``blocks.<stage>.…``, ``conv_head``, ``bn2``): its state dict is the
fine-tuned part of a full ``tf_efficientnet_lite0`` state dict, and θ_full = prefix θ0 ∪ merged tail.
"""
from __future__ import annotations

import torch
from torch import nn

from sammerge.models import lite0
from sammerge.models.depthwise import use_tap_sum_backward
from sammerge.models.model import Lite0TailConfig


class Lite0Tail(nn.Module):
    """Stages ``start``… of a timm EfficientNet, its head convolution, BN and pooling. Batch norms stay in eval mode
    even in ``train()``: folded, they are fixed affine maps (x + b') with no statistics to update. Inputs are made
    channels-last: timm's depthwise convolutions on the tail's small maps (4×4 down to 1×1 at 32 px) ran ~8× faster so
    on 2 CPU cores."""

    def __init__(self, encoder: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({str(i): encoder.blocks[i] for i in range(start, len(encoder.blocks))})
        self.conv_head, self.bn2, self.global_pool = encoder.conv_head, encoder.bn2, encoder.global_pool
        use_tap_sum_backward(self)  # depthwise backward as a tap sum: a fine-tuning step ≈ 3× faster on CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for stage in self.blocks.values():
            x = stage(x)
        return self.global_pool(self.bn2(self.conv_head(x)))

    def train(self, mode: bool = True) -> "Lite0Tail":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def create_lite0_tail(cfg: Lite0TailConfig) -> Lite0Tail:
    """An untrained tail (weights come from the zoo's state dicts), eval mode, channels-last weights."""
    return Lite0Tail(lite0.create_lite0(init=False), cfg.start).eval().to(memory_format=torch.channels_last)


class Lite0Prefix(nn.Module):
    """The frozen part: conv_stem → bn1 → stages < ``start`` of normalized images x = (u/255 − 0.5) / 0.5; a
    one-channel (grayscale) batch is repeated to the three channels the stem reads."""

    def __init__(self, encoder: nn.Module, start: int) -> None:
        super().__init__()
        self.conv_stem, self.bn1 = encoder.conv_stem, encoder.bn1
        self.blocks = nn.ModuleDict({str(i): encoder.blocks[i] for i in range(start)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, self.conv_stem.in_channels, -1, -1)
        x = self.bn1(self.conv_stem(x))
        for stage in self.blocks.values():
            x = stage(x)
        return x


def split_lite0(encoder: nn.Module, start: int) -> tuple[Lite0Prefix, Lite0Tail]:
    """A (BN-folded) timm Lite0 as its frozen prefix and its tail (sharing the encoder's modules; the tail's weights
    channels-last, as :func:`create_lite0_tail` makes them)."""
    return Lite0Prefix(encoder, start).eval(), Lite0Tail(encoder, start).eval().to(memory_format=torch.channels_last)


def create_lite0_prefix(cfg: Lite0TailConfig) -> Lite0Prefix:
    """An untrained prefix for ``cfg`` (weights come from a zoo's prefix file), eval mode."""
    return Lite0Prefix(lite0.create_lite0(init=False), cfg.start).eval()


@torch.no_grad()
def prefix_activations(prefix: nn.Module, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """``prefix`` applied to normalized images [N, C, S, S] in batches: the tail's inputs [N, *input_shape]."""
    return torch.cat([prefix(images[i:i + batch]).contiguous() for i in range(0, len(images), batch)])
