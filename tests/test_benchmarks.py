"""The benchmarks run in CI in a short mode: the comparison must be sound (same configs, same answers)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``benchmarks/SCRIPT`` with ``args`` and ``--json OUT`` on one thread; (process, its JSON report)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_merge_eval_benchmark_quick(tiny_zoo, tmp_path):
    proc, report = run_benchmark("merge_eval.py", "--quick", "--zoo", str(tiny_zoo), "--n-per-task", "32",
                                 "--repeats", "2", out=tmp_path / "merge_eval.json")
    assert report["agreement"].startswith("engine == naive")
    for key in ("engine", "naive", "speedup"):
        assert report["a_slider_update_ms"][key] > 0
    c = report["c_time_to_best_lambda"]
    assert c["image_forwards"]["smart"] < c["image_forwards"]["grid"]
    assert 0 < report["throughput"]["fraction_of_floor"]
    assert "(a) slider update" in proc.stdout and "(c) time-to-best-λ" in proc.stdout


def test_analytics_benchmark_runs(tiny_zoo, tmp_path):
    _, report = run_benchmark("analytics.py", "--zoo", str(tiny_zoo), "--grid", "5", "--naive-points", "4",
                              out=tmp_path / "analytics.json")
    assert report


def test_readme_tables_come_from_the_benchmark_results():
    """Every measured table of the README is what benchmarks/readme_tables.py writes from benchmarks/results/."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_tables.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_method_cost_benchmark_quick(tiny_zoo, tmp_path):
    """Every static method's merged direction is timed; WUDI's closed form equals its naive autograd form."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from method_cost import markdown
    from sammerge.merging import table_methods

    _, report = run_benchmark("method_cost.py", "--quick", "--zoo", str(tiny_zoo), "--threads", "1", "--tasks", "3",
                              out=tmp_path / "method_cost.json")
    assert set(report["vit"]["methods"]) == set(table_methods(3, with_data=True))  # RegMean, Fisher too
    assert all(v["measured_s"] > 0 for v in report["vit"]["methods"].values())
    assert report["wudi_gradient"]["max_abs_diff"] < 1e-6 and report["wudi_gradient"]["naive_autograd_s"] > 0
    assert set(report["demo_statistics"]) == {"fisher", "regmean"} and "Data methods" in markdown(report)
    assert "| `tsv_m` |" in markdown(report)
