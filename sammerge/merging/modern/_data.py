"""What the data-reading methods (RegMean, Fisher) share: the settings that choose the unlabeled images, and the
fine-tuned model they run on.

A method with ``data="unlabeled_images"`` declares ``statistics(zoo, task, variant, params)``: a function of a zoo
(duck-typed: ``create_encoder``, ``finetuned``, ``heads``, ``split``) that returns one task's statistics, a mapping
from state-dict keys to tensors. It reads images, never labels. The merge itself stays a pure function of
state dicts and those statistics (``statistics=[...]``, one mapping per task).
"""
from __future__ import annotations

from typing import Annotated, Literal, Mapping

import torch

from sammerge.data import unlabeled_images
from sammerge.merging.registry import Param

__all__ = ["ImagesPerTask", "ImageSplit", "ImageSeed", "task_images", "finetuned_encoder", "batches"]

ImagesPerTask = Annotated[int, Param(low=1, high=1_000_000, ui_high=2048, step=64, label="images per task",
                                     help="Unlabeled images of each task the statistics are computed on "
                                          "(FusionBench's default 256).")]
ImageSplit = Annotated[Literal["train", "val"], Param(
    label="image split", help="The split the unlabeled images come from (labels are never read): 'train' as "
                              "FusionBench (default); 'val' for zoos that store no training images.")]
ImageSeed = Annotated[int, Param(low=0, high=2**31 - 1, ui_high=100, step=1, label="image seed",
                                 help="Seed of the choice of images.")]


def task_images(zoo, task: str, params: Mapping) -> torch.Tensor:
    """The ``images_per_task`` images of ``task`` (split ``image_split``, chosen by ``image_seed``)."""
    return unlabeled_images(zoo, task, int(params["images_per_task"]), int(params["image_seed"]),
                            split=params["image_split"])


def finetuned_encoder(zoo, task: str, variant: str) -> torch.nn.Module:
    """The encoder of θ_t (eval mode, fp32, on the CPU or the first CUDA device)."""
    encoder = zoo.create_encoder()
    encoder.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in zoo.finetuned(task, variant).items()})
    return encoder.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def batches(images: torch.Tensor, size: int, device) -> list[torch.Tensor]:
    return [images[i:i + size].to(device) for i in range(0, len(images), size)]
