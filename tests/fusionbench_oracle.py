"""Run a snippet of FusionBench (0.2.33, its own venv: ``./dev test`` installs it) as a test oracle.

``./dev test`` exports SAMMERGE_FUSIONBENCH_PYTHON (a python that imports fusion_bench) and
SAMMERGE_REQUIRE_FUSIONBENCH=1; with either set, a missing oracle fails the test instead of skipping it.

    out = run_fusionbench(tmp_path, '''
    from fusion_bench.method.task_singular_vector.utils import ...
    save("merged", merged_state_dict)
    ''', pretrained=theta0, tv0=tau0, tv1=tau1)

Inputs are state dicts (str → tensor) written as safetensors; in the snippet ``load(name)`` returns one (float32,
CPU) and ``save(name, state_dict)`` writes an output, returned by :func:`run_fusionbench` as {name: state dict}.
"""
from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

_PRELUDE = '''
import sys, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file, save_file
_DIR = sys.argv[1]
def load(name):
    return dict(load_file(f"{_DIR}/in-{name}.safetensors"))
def save(name, sd):
    save_file({k: v.detach().float().contiguous() for k, v in sd.items()}, f"{_DIR}/out-{name}.safetensors")
'''


def fusionbench_python() -> str:
    """The oracle's python, or skip (fail where it is required) with the reason."""
    given = os.environ.get("SAMMERGE_FUSIONBENCH_PYTHON")
    required = given is not None or os.environ.get("SAMMERGE_REQUIRE_FUSIONBENCH") == "1"
    why = ""
    if given and not os.access(given, os.X_OK):
        why = f"SAMMERGE_FUSIONBENCH_PYTHON={given} is not an executable file"
    elif not given:
        default = Path(__file__).resolve().parent.parent / ".venv-fusionbench" / "bin" / "python"
        if default.is_file():
            return str(default)
        why = "fusion-bench is not installed (./dev test installs it in .venv-fusionbench)"
    if why:
        if required:
            pytest.fail(f"fusion-bench is required here (SAMMERGE_REQUIRE_FUSIONBENCH): {why}")
        pytest.skip(why)
    return given


def run_fusionbench(tmp_path: Path, snippet: str, timeout: float = 600, **inputs) -> dict[str, dict[str, torch.Tensor]]:
    """Run ``snippet`` in the FusionBench venv with ``inputs`` (name → state dict); returns its saved outputs."""
    python = fusionbench_python()
    work = Path(tmp_path) / "fusionbench"
    work.mkdir(parents=True, exist_ok=True)
    for name, sd in inputs.items():
        save_file({k: v.detach().float().contiguous() for k, v in sd.items()}, str(work / f"in-{name}.safetensors"))
    script = work / "oracle.py"
    script.write_text(_PRELUDE + textwrap.dedent(snippet), encoding="utf-8")
    proc = subprocess.run([python, str(script), str(work)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "1"})
    if proc.returncode != 0:
        pytest.fail(f"fusion-bench oracle failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return {f.name[len("out-"):-len(".safetensors")]: dict(load_file(str(f)))
            for f in sorted(work.glob("out-*.safetensors"))}
