"""Files in users' layouts, written by the tests themselves (no downloads): tiny timm ViTs, pickled
task_vectors / SAFT-Merge modules (stand-in ``src.modeling`` / ``modeling`` and ``open_clip`` packages written
into a temp dir, imported only while writing), Hugging Face CLIP folders, and ImageFolder roots of PNGs."""
from __future__ import annotations

import importlib
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def write_image_folders(root: Path, classes=("ant", "Bee", "cat"), per_class: int = 3, seed: int = 0,
                        sizes=((40, 36), (36, 44), (48, 48))) -> Path:
    """root/{val,test}/<class>/<i>.png: random RGB PNGs of varied sizes (so resize + crop matter)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split in ("val", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = sizes[(i + len(c)) % len(sizes)]
                arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


def reference_images(root: Path, split: str, size: int, crop: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's own pipeline over torchvision's ImageFolder: the independent reference for the stored images."""
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop(crop), transforms.ToTensor(), transforms.Normalize(mean, std)])
    ds = datasets.ImageFolder(str(root / split), transform=lambda im: tf(im.convert("RGB")))
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(xs), torch.tensor(ys)


def perturb(state: dict, scale: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


# -- stand-in task_vectors / SAFT-Merge code ----------------------------------------------------------------
OPEN_CLIP_TRANSFORMER = '''
from collections import OrderedDict
import torch
from torch import nn

class LayerNorm(nn.LayerNorm):
    pass

class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)

class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, quick_gelu=True):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)),
                                              ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))

class Transformer(nn.Module):
    def __init__(self, width, layers, heads, quick_gelu=True):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers)])

    def forward(self, x):
        for block in self.resblocks:
            x = block(x)
        return x

class VisionTransformer(nn.Module):
    def __init__(self, image_size, patch_size, width, layers, heads, output_dim, quick_gelu=True):
        super().__init__()
        grid = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) * width ** -0.5)
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, output_dim) * width ** -0.5)

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj
'''
OPEN_CLIP_MODEL = '''
import torch
from torch import nn
from open_clip.transformer import Transformer, VisionTransformer

class CLIP(nn.Module):
    def __init__(self, image_size=32, patch_size=8, width=64, layers=2, heads=2, embed_dim=16, quick_gelu=True):
        super().__init__()
        self.visual = VisionTransformer(image_size, patch_size, width, layers, heads, embed_dim, quick_gelu)
        self.transformer = Transformer(32, 1, 2)  # text tower leftovers (must be dropped)
        self.token_embedding = nn.Embedding(50, 32)
        self.logit_scale = nn.Parameter(torch.ones([]) * 4.6)
        self.register_buffer("attn_mask", torch.zeros(4, 4), persistent=False)

    def encode_image(self, images):
        return self.visual(images)
'''
MODELING = '''
import torch
from torchvision import transforms
from open_clip.model import CLIP

def _convert_to_rgb(image):
    return image.convert("RGB")

class ImageEncoder(torch.nn.Module):
    def __init__(self, quick_gelu=True, keep_lang=False):
        super().__init__()
        self.model = CLIP(quick_gelu=quick_gelu)
        self.train_preprocess = transforms.Compose([
            transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC), _convert_to_rgb])
        self.val_preprocess = self.train_preprocess
        self.cache_dir = "/nonexistent/cache"

    def forward(self, images):
        return self.model.encode_image(images)

class ClassificationHead(torch.nn.Linear):
    def __init__(self, normalize, weights, biases=None):
        output_size, input_size = weights.shape
        super().__init__(input_size, output_size)
        self.normalize = normalize
        self.weight = torch.nn.Parameter(weights.clone())
        self.bias = torch.nn.Parameter(torch.zeros_like(self.bias) if biases is None else biases.clone())

    def forward(self, inputs):
        if self.normalize:
            inputs = inputs / inputs.norm(dim=-1, keepdim=True)
        return super().forward(inputs)
'''


def write_stand_in_packages(root: Path, module: str = "src.modeling") -> None:
    """open_clip/{model,transformer}.py and src/modeling.py (task_vectors) or modeling.py (SAFT-Merge)."""
    (root / "open_clip").mkdir(parents=True, exist_ok=True)
    (root / "open_clip" / "__init__.py").write_text("")
    (root / "open_clip" / "transformer.py").write_text(textwrap.dedent(OPEN_CLIP_TRANSFORMER))
    (root / "open_clip" / "model.py").write_text(textwrap.dedent(OPEN_CLIP_MODEL))
    path = root / (module.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    if "." in module:
        (path.parent / "__init__.py").write_text("")
    path.write_text(textwrap.dedent(MODELING))


@contextmanager
def stand_in_code(root: Path, module: str = "src.modeling"):
    """Import the stand-in packages from ``root`` (only while writing fixtures); forget them afterwards."""
    write_stand_in_packages(root, module)
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(module)
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n.split(".")[0] in ("open_clip", "src", "modeling")]:
            del sys.modules[name]
