"""Zero-shot CLIP heads from the text tower of a local Hugging Face ``CLIPModel`` folder (optional extra ``hf``).

For class c with name n_c and templates T (FusionBench ``mixins/clip_classification.py``)::

    e_{c,t} = normalize(text_projection(text_model(tokenize(t.format(n_c))).pooler_output))
    W_c     = exp(logit_scale) · normalize(mean_t e_{c,t}),   b_c = 0

so logits = normalize(f) @ Wᵀ with f the image features after ``visual_projection``. The folder is read with
``use_safetensors=True`` and ``local_files_only=True``: nothing is unpickled and nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from sammerge.errors import CheckpointError, ConfigError
from sammerge.models.model import Head

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def class_prompt_name(folder_name: str) -> str:
    """A class folder's name as a prompt word: ``_`` → space (``sea_lion`` → ``sea lion``)."""
    return folder_name.replace("_", " ")


@torch.no_grad()
def zeroshot_head(folder: Path, class_names: list[str], templates: list[str] | tuple[str, ...] = DEFAULT_TEMPLATES) -> Head:
    """The normalized zero-shot head of ``class_names`` (formula in the module docstring)."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("zero-shot heads need transformers: pip install 'sammerge[hf]' (or give head files)") from None
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ConfigError(f"templates must contain '{{}}' where the class name goes (got {bad[0]!r})")
    try:
        model = transformers.CLIPModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{folder}: cannot read a CLIPModel with its tokenizer for zero-shot heads "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    rows = []
    for name in class_names:
        tokens = tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
        pooled = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        emb = model.text_projection(pooled)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(0)
        rows.append(mean / mean.norm())
    weight = torch.stack(rows) * model.logit_scale.exp()
    return Head(weight.float(), torch.zeros(len(class_names)), normalize=True)
