"""Reading whole pickled ``nn.Module`` objects (task_vectors / SAFT-Merge ``ImageEncoder``, ``ClassificationHead``).

:func:`sammerge.io.load_torch_file` returns them as trees of inert objects (nothing of the original code runs);
this module walks such a tree the way ``nn.Module.state_dict`` would: ``_parameters``, persistent ``_buffers``,
then ``_modules`` recursively, keys joined with dots.
"""
from __future__ import annotations

from typing import Iterator

import torch

from sammerge.io import InertObject


def is_module_tree(obj) -> bool:
    """True for an inert stand-in of a pickled ``nn.Module`` (it carries ``_modules`` / ``_parameters``)."""
    return isinstance(obj, (InertObject, torch.nn.Module)) and isinstance(getattr(obj, "__dict__", {}).get("_parameters"), dict)


def class_name(obj) -> str:
    """The qualified class name the file used (``src.modeling.ImageEncoder``)."""
    if isinstance(obj, InertObject):
        return type(obj).__qualified_name__
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def named_modules(obj, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted name, module) for ``obj`` and every sub-module, like ``nn.Module.named_modules``."""
    yield prefix, obj
    for name, child in (obj.__dict__.get("_modules") or {}).items():
        if child is not None and is_module_tree(child):
            yield from named_modules(child, f"{prefix}.{name}" if prefix else name)


def module_state_dict(obj) -> dict[str, torch.Tensor]:
    """The state dict of a pickled module tree: parameters and persistent buffers, by dotted name."""
    out: dict[str, torch.Tensor] = {}
    for name, module in named_modules(obj):
        d = module.__dict__
        skip = set(d.get("_non_persistent_buffers_set") or ())
        for kind in ("_parameters", "_buffers"):
            for key, value in (d.get(kind) or {}).items():
                if value is None or (kind == "_buffers" and key in skip):
                    continue
                out[f"{name}.{key}" if name else key] = value.detach() if isinstance(value, torch.Tensor) else value
    return out


def submodule(obj, path: str):
    """The sub-module at dotted ``path`` (``model.visual``), or None."""
    for part in path.split("."):
        if obj is None:
            return None
        obj = (obj.__dict__.get("_modules") or {}).get(part)
    return obj
