"""Training loops of a zoo build: pretraining, linear probes, plain and SAM fine-tuning.

All loops are seeded through an explicit ``torch.Generator`` so that, for a task, the plain and the
SAM run see exactly the same batches in the same order: the only difference is SAM.

On CUDA a batch is assembled on the CPU (same generator, same bytes as on the CPU), copied from pinned memory
with ``non_blocking=True``, and the loss per step stays on the device until the loop ends: the hot loops never
wait for the GPU. ``FinetuneRecipe.precision="bf16"`` runs the encoder's forward (and so its backward) under
bf16 autocast; weights, optimizer state, logits and the loss stay fp32.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sammerge.models.linearize import LinearizedEncoder
from sammerge.models.model import Head
from sammerge.models.presets import FinetuneRecipe, PretrainRecipe, ProbeRecipe, VariantSpec
from sammerge.training.sam import SAM

StepCallback = Callable[[int], None]


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """Indices of ``steps`` batches drawn as successive random permutations (epochs) of range(n)."""
    order = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            order = torch.randperm(n, generator=generator)
            pos = 0
        yield order[pos:pos + min(batch_size, n)]
        pos += batch_size


def _lr_lambda(schedule: str, warmup: int, steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``: unchanged on the CPU; on CUDA copied from pinned memory without waiting for it."""
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on ``device`` for ``precision="bf16"``, else nothing (fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    encoder.eval()
    device = next(encoder.parameters()).device
    return torch.cat([encoder(to_device(images[i:i + batch_size], device)) for i in range(0, len(images), batch_size)])


def _batch(data, idx: torch.Tensor, fresh_noise: bool, generator: torch.Generator,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images ``idx`` (with freshly drawn noise, ``Split.noisy_batch``, or the stored ones) and their
    labels, on ``device``."""
    x = data.noisy_batch(idx, generator) if fresh_noise else data.images[idx]
    return to_device(x, device), to_device(data.labels[idx], device)


def _losses(losses: list[torch.Tensor]) -> list[float]:
    """The per-step losses as floats: one device → host copy after the loop, not one per step."""
    return torch.stack(losses).cpu().tolist() if losses else []


def pretrain(encoder: nn.Module, data, num_classes: int, recipe: PretrainRecipe, generator: torch.Generator,
             on_step: StepCallback | None = None, val=None) -> float | None:
    """Supervised pretraining with AdamW + cosine on a ``Split``; the temporary classifier is discarded.

    Returns the pretraining accuracy on ``val`` (a Split) when given, else None.
    """
    device = next(encoder.parameters()).device
    head = nn.Linear(encoder.num_features, num_classes).to(device)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda("cosine", recipe.steps // 20, recipe.steps))
    encoder.train()
    for step, idx in enumerate(_batches(len(data.labels), recipe.batch_size, recipe.steps, generator)):
        x, y = _batch(data, idx, recipe.fresh_noise, generator, device)
        loss = F.cross_entropy(head(encoder(x)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if on_step:
            on_step(step)
    encoder.eval()
    if val is None:
        return None
    temp = Head(head.weight.detach().cpu(), head.bias.detach().cpu())
    return accuracy_and_loss(encoder, temp, val.images, val.labels)[0]


def fit_probe(train_features: torch.Tensor, labels: torch.Tensor, num_classes: int, recipe: ProbeRecipe,
              generator: torch.Generator) -> Head:
    """Multinomial logistic regression on frozen features (full-batch AdamW, L2 via weight decay).

    Features are centred and divided by one global scale (not per feature: a feature that is nearly
    constant on the training set would otherwise get a huge weight); the affine map is folded back
    into the head so that it applies to raw encoder features.
    """
    mean = train_features.mean(0)
    std = (train_features - mean).pow(2).mean().sqrt().clamp_min(1e-6).expand_as(mean)
    z = (train_features - mean) / std
    linear = nn.Linear(z.shape[1], num_classes)
    with torch.no_grad():  # seeded init on the CPU, then moved
        linear.weight.normal_(0, 0.01, generator=generator)
        linear.bias.zero_()
    linear = linear.to(z.device)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    for _ in range(recipe.steps):
        loss = F.cross_entropy(linear(z), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # logits = ((f − μ)/σ) Wᵀ + b = f (W/σ)ᵀ + (b − (μ/σ)·Wᵀ)
        weight = linear.weight / std
        bias = linear.bias - (mean / std) @ linear.weight.T
    return Head(weight.detach().clone(), bias.detach().clone())


_STAGES = {"all": None, "last_stage": ("layer4.",), "last_two_stages": ("layer3.", "layer4.")}


def trainable_parameters(encoder: nn.Module, trainable: str = "all") -> list[nn.Parameter]:
    """The parameters fine-tuning updates: all, or those of the last (two) ResNet stage(s) (timm's layer3/4).

    A ``LinearizedEncoder`` names its parameters ``encoder.*``; the prefix is ignored.
    """
    prefixes = _STAGES[trainable]
    chosen = []
    for name, p in encoder.named_parameters():
        name = name.removeprefix("encoder.") if isinstance(encoder, LinearizedEncoder) else name
        if p.requires_grad and (prefixes is None or name.startswith(prefixes)):
            chosen.append(p)
    if not chosen:
        raise ValueError(f"fine-tuning: no parameters match trainable={trainable!r}")
    return chosen


def finetune(encoder: nn.Module, head: Head, data, recipe: FinetuneRecipe, variant: VariantSpec, generator: torch.Generator,
             on_step: StepCallback | None = None) -> list[float]:
    """Fine-tune the encoder in place on one task (a ``Split``) with the head frozen; returns the loss per step.

    ``recipe.precision="bf16"``: features f(x) under bf16 autocast (both SAM passes), then
    loss = CE(f(x)·Wᵀ + b, y) in fp32; the backward pass runs outside the autocast region, as torch advises."""
    device = next(encoder.parameters()).device
    steps = variant.steps or recipe.steps
    if recipe.optimizer == "adamw":
        base_cls, kwargs = torch.optim.AdamW, dict(lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        base_cls, kwargs = torch.optim.SGD, dict(lr=recipe.lr, weight_decay=recipe.weight_decay,
                                                 momentum=recipe.momentum)
    params = trainable_parameters(encoder, recipe.trainable)
    if variant.sam:
        optimizer = SAM(params, base_cls, rho=variant.rho, adaptive=variant.adaptive, **kwargs)
        base = optimizer.base_optimizer
    else:
        optimizer = base = base_cls(params, **kwargs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(base, _lr_lambda(recipe.schedule, recipe.warmup_steps, steps))
    head_w, head_b = head.weight.to(device), head.bias.to(device)

    def loss_on(x, y):
        with autocast(device, recipe.precision):
            feats = encoder(x)
        return F.cross_entropy(F.linear(feats.float(), head_w, head_b), y)

    losses = []
    encoder.train()
    for step, idx in enumerate(_batches(len(data.labels), recipe.batch_size, steps, generator)):
        x, y = _batch(data, idx, recipe.fresh_noise, generator, device)
        loss = loss_on(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if variant.sam:
            optimizer.first_step(zero_grad=True)
            loss_on(x, y).backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            optimizer.second_step(zero_grad=True)
        else:
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            optimizer.step()
        scheduler.step()
        losses.append(loss.detach())
        if on_step:
            on_step(step)
    encoder.eval()
    return _losses(losses)


@torch.no_grad()
def accuracy_and_loss(encoder: nn.Module, head: Head, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 1024) -> tuple[float, float]:
    feats = features(encoder, images, batch_size)
    logits = head(feats.cpu()) if feats.device.type == "cpu" else F.linear(feats, head.weight.to(feats.device),
                                                                           head.bias.to(feats.device))
    labels = labels.to(logits.device)
    return float((logits.argmax(1) == labels).float().mean()), float(F.cross_entropy(logits, labels))
