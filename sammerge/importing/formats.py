"""Format converters: a user's file → an encoder state dict in timm's key layout (+ what the file says).

* ``timm``: a state dict (safetensors or a weights-only torch file; ``state_dict`` / ``model`` wrappers and
  ``module.`` prefixes removed, as ``timm.models.load_state_dict`` does); the classifier is dropped.
* ``task_vectors`` (mlfoundations/task_vectors, BAIKLAB/SAFT-Merge): a whole pickled ``ImageEncoder`` read as
  inert objects; ``model.visual.*`` → timm CLIP ViT by timm's own ``_convert_openai_clip``; QuickGELU is
  detected from the activation modules' class names.
* ``hf_clip`` (FusionBench): a ``CLIPVisionModel`` / ``CLIPModel`` folder (``config.json`` + safetensors);
  ``vision_model.`` prefix optional (transformers ≥ 5 drops it); ``visual_projection`` → timm ``head``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sammerge.errors import CheckpointError
from sammerge.importing import pickled
from sammerge.io import check_file_size, is_safetensors_file, load_state_dict, load_torch_file

StateDict = dict[str, torch.Tensor]


@dataclass
class Converted:
    """An encoder state dict in timm keys, and facts read from the file (``quick_gelu``, ``hf_config``)."""
    state: StateDict
    facts: dict = field(default_factory=dict)


def read_file(path: Path):
    """A safetensors file → dict; a zip torch file → whatever it holds (inert module trees for modules)."""
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    check_file_size(path)
    if is_safetensors_file(path):
        return load_state_dict(path, check_finite_values=False)
    return load_torch_file(path)


def _tensors_only(obj, path: Path) -> StateDict:
    if pickled.is_module_tree(obj):
        obj = pickled.module_state_dict(obj)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {pickled.class_name(obj)}, not a state dict or a module")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry '{bad[0]}' is not a tensor")
    return dict(obj)


def unwrap_state_dict(obj, path: Path) -> StateDict:
    """``{"state_dict": …}`` / ``{"model": …}`` / ``{"state_dict_ema": …}`` unwrapped, ``module.`` stripped."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict) or key in obj and pickled.is_module_tree(obj[key]):
                obj = obj[key]
                break
    state = _tensors_only(obj, path)
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


# -- timm ------------------------------------------------------------------------------------------------
def convert_timm(path: Path, classifier: str | tuple[str, ...] | None, expected: set[str]) -> Converted:
    """A timm checkpoint; keys of the classifier (``pretrained_cfg["classifier"]``) not in the encoder are dropped."""
    state = unwrap_state_dict(read_file(path), path)
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    dropped = [k for k in state if k not in expected and any(k.startswith(n + ".") for n in names)]
    for key in dropped:
        del state[key]
    return Converted(state, {"dropped_classifier": dropped})


# -- task_vectors / SAFT-Merge ------------------------------------------------------------------------
def _visual_root(obj, path: Path):
    """The module tree or state dict of the visual tower: ``model.visual`` of an ImageEncoder (or CLIP's ``visual``)."""
    if pickled.is_module_tree(obj):
        for where in ("model.visual", "visual", ""):
            sub = pickled.submodule(obj, where) if where else obj
            if sub is not None and "conv1" in (sub.__dict__.get("_modules") or {}):
                return sub, None
        raise CheckpointError(f"{path}: {pickled.class_name(obj)} has no CLIP visual tower (model.visual.conv1)")
    state = unwrap_state_dict(obj, path)
    for prefix in ("model.visual.", "visual.", ""):
        if f"{prefix}conv1.weight" in state:
            return None, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    raise CheckpointError(f"{path}: no CLIP visual tower (no 'model.visual.conv1.weight' or 'visual.conv1.weight')")


def convert_task_vectors(path: Path) -> Converted:
    """Pickled open_clip ImageEncoder (or its state dict) → timm CLIP ViT keys; only ``model.visual.*`` is kept."""
    from timm.models.vision_transformer import _convert_openai_clip

    tree, state = _visual_root(read_file(path), path)
    facts: dict = {}
    if tree is not None:
        state = pickled.module_state_dict(tree)
        acts = {pickled.class_name(m).rsplit(".", 1)[-1] for _, m in pickled.named_modules(tree)}
        facts["quick_gelu"] = "QuickGELU" in acts
        facts["module_class"] = pickled.class_name(tree)
    if "proj" not in state:
        raise CheckpointError(f"{path}: the visual tower has no 'proj' tensor (CLIP's image projection)")
    return Converted(_convert_openai_clip({f"visual.{k}": v for k, v in state.items()}, None), facts)


def read_pickled_head(path: Path) -> tuple[torch.Tensor, torch.Tensor, bool | None]:
    """A task_vectors ``ClassificationHead`` (a pickled ``nn.Linear`` + ``normalize``) → weight, bias, normalize."""
    obj = read_file(path)
    normalize = obj.__dict__.get("normalize") if pickled.is_module_tree(obj) else None
    state = unwrap_state_dict(obj, path)
    weight, bias = head_tensors(state, path)
    return weight, bias, None if normalize is None else bool(normalize)


def head_tensors(state: StateDict, path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``weight`` [C, D] and ``bias`` [C] of a head file (keys ``weight``/``bias`` or one ``X.weight``/``X.bias``)."""
    if "weight" in state:
        return state["weight"], state.get("bias")
    weights = [k for k in state if k.endswith(".weight")]
    if len(weights) == 1:
        return state[weights[0]], state.get(weights[0][:-6] + "bias")
    raise CheckpointError(f"{path}: expected a head with tensors 'weight' [C, D] and 'bias' [C] "
                          f"(found: {', '.join(sorted(state)[:6]) or 'nothing'})")


# -- Hugging Face CLIP (FusionBench) ---------------------------------------------------------------------
_HF_SWAPS = (("embeddings.patch_embedding.", "patch_embed.proj."), ("pre_layrnorm.", "norm_pre."),
             ("post_layernorm.", "norm."), ("encoder.layers.", "blocks."), (".self_attn.out_proj.", ".attn.proj."),
             (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."))


def read_hf_folder(folder: Path) -> tuple[StateDict, dict]:
    """(tensors, vision config) of a CLIPVisionModel / CLIPModel folder, never downloading anything."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: expected a CLIPVisionModel folder (config.json + model.safetensors)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (a Hugging Face model folder needs config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
    vision = config.get("vision_config", config) if isinstance(config, dict) else {}
    files = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{folder}: no model.safetensors (or pytorch_model.bin)")
    state: StateDict = {}
    for f in files:
        state.update(unwrap_state_dict(read_file(f), f))
    return state, vision


def convert_hf_clip(folder: Path) -> Converted:
    """HF CLIP vision tower → timm CLIP ViT keys: q/k/v concatenated into ``qkv``, ``visual_projection`` → ``head``."""
    raw, vision = read_hf_folder(folder)
    state = {k[len("vision_model."):] if k.startswith("vision_model.") else k: v for k, v in raw.items()}
    out: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(("text_model.", "text_projection", "logit_scale")) or key.endswith("position_ids"):
            continue
        if key == "embeddings.class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)
        elif key == "visual_projection.weight":
            out["head.weight"] = value
            out["head.bias"] = torch.zeros(value.shape[0], dtype=value.dtype)
        elif ".self_attn." in key and key.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj"):
            stem, proj, kind = key.rsplit(".", 2)
            qkv.setdefault(f"{stem}.{kind}", {})[proj] = value
        else:
            for a, b in _HF_SWAPS:
                key = key.replace(a, b)
            out[key] = value
    for stem_kind, parts in qkv.items():
        stem, kind = stem_kind.rsplit(".", 1)
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise CheckpointError(f"{folder}: '{stem}' lacks {sorted({'q_proj', 'k_proj', 'v_proj'} - set(parts))}")
        new = stem.replace("encoder.layers.", "blocks.").replace(".self_attn", ".attn.qkv")
        out[f"{new}.{kind}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    facts = {"quick_gelu": vision.get("hidden_act", "quick_gelu") == "quick_gelu", "hf_config": vision}
    return Converted(out, facts)


# -- the timm CLIP architecture that fits a converted state dict ---------------------------------------
_KNOWN = {(768, 32, 12, 224): "vit_base_patch32_clip", (768, 16, 12, 224): "vit_base_patch16_clip",
          (1024, 14, 24, 224): "vit_large_patch14_clip"}
_HAS_QUICKGELU = {"vit_base_patch32_clip", "vit_base_patch16_clip", "vit_large_patch14_clip"}


def clip_architecture(state: StateDict, quick_gelu: bool, num_heads: int | None = None) -> tuple[str, dict]:
    """(timm model name, kwargs) of the CLIP ViT whose tensors ``state`` holds (num_heads: width / 64 unless given)."""
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    img = grid * patch
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / width if depth else 4.0
    proj = int(state["head.weight"].shape[0]) if "head.weight" in state else 0
    kwargs: dict = {"num_classes": proj}
    base = _KNOWN.get((width, patch, depth, img)) if mlp_ratio == 4.0 and num_heads in (None, width // 64) else None
    if base:
        return f"{base}{'_quickgelu' if quick_gelu and base in _HAS_QUICKGELU else ''}_224", kwargs
    kwargs.update(img_size=img, patch_size=patch, embed_dim=width, depth=depth,
                  num_heads=num_heads or max(1, width // 64), mlp_ratio=mlp_ratio)
    if quick_gelu:
        kwargs["act_layer"] = "quick_gelu"
    return "vit_base_patch32_clip_224", kwargs
