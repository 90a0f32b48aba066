"""benchmarks/gpu.py --short (the CI run on CPU): it builds a zoo, times every row, and the accuracy it reports
for the merged model is what a plain forward pass of θ0 + λ Σ τ_t gives."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from sammerge.io import load_state_dict
from sammerge.zoo import open_zoo

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_short_on_cpu(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--short", "--device", "cpu",
                           "--threads", "1", "--out", str(tmp_path / "zoo"), "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["short"] and r["preset"] == "tiny"
    names = [row["name"] for row in r["rows"]]
    assert names[0].startswith("build the tiny zoo") and any("bf16" in n for n in names)
    assert any("task plane" in n for n in names) and any("eigenvalue" in n for n in names)
    assert any(n == "fine-tune 5 steps, bf16" for n in names) and any(n == "fine-tune 5 steps, fp32" for n in names)
    assert 0.9 <= r["bf16"]["prediction_agreement"] <= 1  # bf16 autocast (the CPU's) agrees on most images
    assert all(row["seconds"] > 0 for row in r["rows"])
    for row in r["rows"]:
        assert row["name"] in proc.stdout  # the printed table has every row

    # independent reference: θ0 + λ Σ τ_t from the files, loaded into a fresh module, plain forward per task
    zoo = open_zoo(tmp_path / "zoo", verify=True)
    theta0 = load_state_dict(zoo.path / zoo.manifest.pretrained.file)
    merged = {k: v.clone() for k, v in theta0.items()}
    for task in zoo.tasks:
        theta_t = load_state_dict(zoo.path / zoo.manifest.checkpoint(task, r["variant"]).file)
        for k in merged:
            merged[k] += r["lambda"] * (theta_t[k] - theta0[k])
    model = zoo.create_encoder()
    model.load_state_dict(merged)
    for task in zoo.tasks:
        part = zoo.split(task, "val").subset(64, 0)
        with torch.no_grad():
            logits = zoo.heads[task](model(part.images))
        acc = float((logits.argmax(1) == part.labels).float().mean())
        # the engine sums the task vectors in another order: allow one near-tie image to flip, no more
        assert abs(acc - r["per_task_accuracy"][task]) <= 1 / 64 + 1e-9, (task, acc, r["per_task_accuracy"][task])
    assert abs(r["mean_accuracy"] - sum(r["per_task_accuracy"].values()) / len(zoo.tasks)) < 1e-12
