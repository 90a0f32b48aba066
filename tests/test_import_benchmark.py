"""benchmarks/cpu_vit.py runs end to end in its quick mode (the full run writes benchmarks/results/cpu_vit.json)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_vit_benchmark_quick(tmp_path):
    out = tmp_path / "cpu_vit.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_vit.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["images_per_task"] for r in report["rows"]] == [4, 8]
    for row in report["rows"]:
        assert row["slider_to_number_s"] >= row["evaluate_s"] > 0
        assert row["images"] == row["images_per_task"] * report["tasks"]
    # fewer images, wider interval
    assert report["rows"][0]["ci95_half_width_task"] > report["rows"][1]["ci95_half_width_task"]
    assert report["hvp_16_images_s"] > 0
    # the explorer path: an estimate first (latency target 0 in --quick), then the exact numbers
    ex = report["explorer"]
    assert ex["estimating"] and ex["estimate_n_per_task"] == 4 and ex["n_per_task"] == 8
    for move in ex["moves"]:
        assert not move["first_exact"] and move["first_text"].startswith("≈ ")
        assert 0 < move["first_number_s"] <= move["estimated_page_s"] <= move["refined_s"]
        assert move["ci95"][0] <= move["first_mean"] <= move["ci95"][1]
