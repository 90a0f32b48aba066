"""`sammerge zoo import` of CLIP layouts: task_vectors / SAFT-Merge pickled modules and FusionBench HF folders.

Every fixture is written here (stand-in ``src.modeling`` / ``modeling`` / ``open_clip`` code, imported only to
write the files). The reference is the original model's own forward pass on torchvision-preprocessed images.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
import yaml

from import_fixtures import CLIP_MEAN, CLIP_STD, reference_images, stand_in_code, write_image_folders
from sammerge.evaluation.evaluator import Evaluator
from sammerge.importing import import_zoo, load_import_spec
from sammerge.merging import MergeSpec
from sammerge.merging.apply import merge_zoo

TASKS = {"cars": "Cars", "dtd": "DTD"}


def _perturb_module(module, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def write_task_vectors(root, module: str = "src.modeling", quick_gelu: bool = True):
    """<root>/ckpt/{zeroshot.pt, <Dataset>/finetuned*.pt, head_<Dataset>.pt} + image folders + reference logits."""
    ckpt = root / "ckpt"
    refs = {}
    with stand_in_code(root / "code", module) as modeling:
        torch.manual_seed(0)
        base = modeling.ImageEncoder(quick_gelu=quick_gelu).eval()
        ckpt.mkdir(parents=True)
        torch.save(base, ckpt / "zeroshot.pt")
        for i, (task, ds) in enumerate(TASKS.items()):
            (ckpt / ds).mkdir()
            models = {"plain": copy.deepcopy(base), "sam": copy.deepcopy(base)}
            _perturb_module(models["plain"], 0.02, 10 + i)
            _perturb_module(models["sam"], 0.02, 20 + i)
            torch.save(models["plain"], ckpt / ds / "finetuned.pt")
            torch.save(models["sam"], ckpt / ds / "finetuned_sam_rho0.05_v2_4x_best.pt")
            head = modeling.ClassificationHead(True, torch.randn(3, 16, generator=torch.Generator().manual_seed(i)))
            torch.save(head, ckpt / f"head_{ds}.pt")
            write_image_folders(root / "data" / task, seed=i)
            for split in ("val", "test"):
                x, y = reference_images(root / "data" / task, split, 32, 32, CLIP_MEAN, CLIP_STD)
                with torch.no_grad():
                    refs[(task, split)] = {"labels": y, "pretrained": head(base(x)),
                                           **{v: head(m(x)) for v, m in models.items()}}
    spec = {"format": "task_vectors", "pretrained": "ckpt/zeroshot.pt", "model_kwargs": {"num_heads": 2},
            "tasks": {t: {"head": f"ckpt/head_{ds}.pt", "data": f"data/{t}",
                          "checkpoints": {"plain": f"ckpt/{ds}/finetuned.pt",
                                          "sam": f"ckpt/{ds}/finetuned_sam_rho0.05_v2_4x_best.pt"}}
                      for t, ds in TASKS.items()}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root / "spec.yaml", refs


def check_against_reference(zoo, refs, atol=1e-5):
    """Stored-image logits of θ0 and each θ_t equal the original models' own forward; Evaluator agrees; λ = 0 / 1."""
    encoder = zoo.create_encoder()
    for (task, split), ref in refs.items():
        part = zoo.split(task, split)
        assert torch.equal(part.labels, ref["labels"])
        for name in ["pretrained", *zoo.variants]:
            params = zoo.pretrained() if name == "pretrained" else zoo.finetuned(task, name)
            encoder.load_state_dict(params)
            with torch.no_grad():
                logits = zoo.heads[task](encoder(part.images))
            torch.testing.assert_close(logits, ref[name], atol=atol, rtol=0)
    for split in sorted({s for _, s in refs}):
        ev = Evaluator.from_zoo(zoo, split=split, n_per_task=None, device="cpu")
        for variant in zoo.variants:
            for task in zoo.tasks:
                ref = refs[(task, split)]
                for lam, name in ((0.0, "pretrained"), (1.0, variant)):
                    spec = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": lam}, variants={task: variant})
                    result = ev.evaluate(merge_zoo(zoo, spec))[task]
                    assert result.loss == pytest.approx(float(F.cross_entropy(ref[name], ref["labels"])), abs=atol)
                    assert result.accuracy == pytest.approx(float((ref[name].argmax(1) == ref["labels"]).float().mean()))


@pytest.mark.parametrize("module", ["src.modeling", "modeling"])
def test_task_vectors_import_matches_original_forward(tmp_path, module):
    spec_path, refs = write_task_vectors(tmp_path, module)
    zoo = import_zoo(load_import_spec(spec_path), tmp_path / "zoo", spec_file=spec_path)
    m = zoo.manifest
    assert m.encoder.model == "vit_base_patch32_clip_224" and m.encoder.kwargs["act_layer"] == "quick_gelu"
    assert m.encoder.kwargs["num_classes"] == 16 and m.source["facts"]["quick_gelu"] is True
    assert all(t.head_normalize for t in m.tasks)  # ClassificationHead.normalize = True, read from the file
    assert zoo.variants == ["plain", "sam"] and m.images.splits == ["val", "test"]
    rec = m.checkpoint("dtd", "sam")
    assert rec.source.format == "task_vectors" and rec.source.original.endswith("DTD/finetuned_sam_rho0.05_v2_4x_best.pt")
    assert rec.method["rho"] == 0.05 and rec.method["sam"] is True
    assert not any(k.startswith(("transformer.", "token_embedding")) for k in zoo.pretrained())  # text tower dropped
    check_against_reference(zoo, refs)
    assert zoo.verify()


def test_plain_gelu_clip_is_detected(tmp_path):
    spec_path, refs = write_task_vectors(tmp_path, quick_gelu=False)
    zoo = import_zoo(load_import_spec(spec_path), tmp_path / "zoo")
    assert "act_layer" not in zoo.manifest.encoder.kwargs  # GELU: timm's default for the CLIP ViT
    check_against_reference(zoo, {k: v for k, v in refs.items() if k[1] == "test"})


def test_loader_never_imports_the_pickled_code(tmp_path):
    spec_path, _ = write_task_vectors(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        from sammerge.importing import import_zoo, load_import_spec
        zoo = import_zoo(load_import_spec({str(spec_path)!r}), {str(tmp_path / 'zoo')!r})
        leaked = [n for n in sys.modules if n.split('.')[0] in ('src', 'modeling', 'open_clip')]
        print('LEAKED', leaked)
        assert not leaked, leaked
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LEAKED []" in out.stdout


# -- FusionBench: Hugging Face CLIP folders ----------------------------------------------------------------------
def write_tiny_tokenizer(transformers, folder) -> None:
    """A byte-level CLIP BPE tokenizer with no merges (512 byte tokens + start/end), saved beside the model."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)


def write_hf_clip(root):
    """base/ = a tiny CLIPModel folder; ft/<task>_{plain,sam}/ = CLIPVisionModel folders (one with the
    transformers<5 'vision_model.' key prefix, the others as this transformers writes them); heads as files."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=512, eos_token_id=513,
                         pad_token_id=513),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"),
        projection_dim=16)
    torch.manual_seed(0)
    base = transformers.CLIPModel(config).eval()
    base.save_pretrained(root / "base")
    write_tiny_tokenizer(transformers, root / "base")
    refs, tasks = {}, {}
    for i, task in enumerate(TASKS):
        heads = torch.randn(3, 16, generator=torch.Generator().manual_seed(i))
        save_file({"weight": heads, "bias": torch.zeros(3)}, root / f"head_{task}.safetensors")
        models = {}
        for j, variant in enumerate(("plain", "sam")):
            vision = transformers.CLIPVisionModel(config.vision_config).eval()
            getattr(vision, "vision_model", vision).load_state_dict(base.vision_model.state_dict())  # v4 / v5
            _perturb_module(vision, 0.02, 100 + 10 * i + j)
            folder = root / "ft" / f"{task}_{variant}"
            vision.save_pretrained(folder)
            if i == 0 and j == 0:  # the transformers < 5 layout
                state = load_file(str(folder / "model.safetensors"))
                save_file({k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in state.items()},
                          str(folder / "model.safetensors"), metadata={"format": "pt"})
            models[variant] = vision
        write_image_folders(root / "data" / task, seed=i)
        tasks[task] = {"head": f"head_{task}.safetensors", "data": f"data/{task}",
                       "checkpoints": {v: f"ft/{task}_{v}" for v in models}}

        def logits(vision_model, x):
            f = base.visual_projection(vision_model(pixel_values=x).pooler_output)
            return (f / f.norm(dim=-1, keepdim=True)) @ heads.T

        for split in ("val", "test"):
            x, y = reference_images(root / "data" / task, split, 32, 32, CLIP_MEAN, CLIP_STD)
            with torch.no_grad():
                refs[(task, split)] = {"labels": y, "pretrained": logits(base.vision_model, x),
                                       **{v: logits(m, x) for v, m in models.items()}}
    (root / "spec.json").write_text(json.dumps({"format": "hf_clip", "pretrained": "base", "tasks": tasks}))
    return root / "spec.json", refs


def test_hf_clip_import_matches_transformers_forward(tmp_path):
    spec_path, refs = write_hf_clip(tmp_path)
    zoo = import_zoo(load_import_spec(spec_path), tmp_path / "zoo")
    m = zoo.manifest
    assert m.encoder.kwargs["act_layer"] == "quick_gelu" and m.encoder.kwargs["num_heads"] == 2
    assert all(t.head_normalize for t in m.tasks)  # CLIP formats: heads read L2-normalized features
    assert m.checkpoint("cars", "plain").source.format == "hf_clip"
    check_against_reference(zoo, refs)


def test_hf_zero_shot_heads_equal_clips_own_logits(tmp_path):
    """head: zeroshot → logits of θ0 equal CLIPModel's logits_per_image for prompts 'a photo of a {class}.'."""
    transformers = pytest.importorskip("transformers")
    spec_path, _ = write_hf_clip(tmp_path)
    spec = json.loads(spec_path.read_text())
    write_image_folders(tmp_path / "zs", classes=("ant", "sea_lion", "cat"), seed=5)
    spec["tasks"] = {"zs": {"head": "zeroshot", "data": "zs", "templates": ["a photo of a {}."],
                            "checkpoints": spec["tasks"]["cars"]["checkpoints"]}}
    (tmp_path / "zs.json").write_text(json.dumps(spec))
    zoo = import_zoo(load_import_spec(tmp_path / "zs.json"), tmp_path / "zoo")
    base = transformers.CLIPModel.from_pretrained(str(tmp_path / "base"), local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "base"), local_files_only=True)
    tokens = tokenizer([f"a photo of a {c}." for c in ("ant", "cat", "sea lion")], padding=True, return_tensors="pt")
    x, y = reference_images(tmp_path / "zs", "test", 32, 32, CLIP_MEAN, CLIP_STD)
    with torch.no_grad():
        ref = base(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=x).logits_per_image
        encoder = zoo.create_encoder()
        encoder.load_state_dict(zoo.pretrained())
        logits = zoo.heads["zs"](encoder(zoo.split("zs", "test").images))
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-5)  # × exp(logit_scale) = 100
    assert zoo.manifest.source["heads"]["zs"].startswith("zero-shot from")


def test_gelu_checkpoint_against_quickgelu_pretrained_is_a_problem(tmp_path):
    from sammerge.errors import ImportCheckError
    spec_path, _ = write_task_vectors(tmp_path)
    with stand_in_code(tmp_path / "code2", "src.modeling") as modeling:
        torch.save(modeling.ImageEncoder(quick_gelu=False), tmp_path / "ckpt" / "DTD" / "finetuned.pt")
    with pytest.raises(ImportCheckError, match=r"DTD/finetuned.pt: uses GELU, the pretrained model does not"):
        import_zoo(load_import_spec(spec_path), tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
