"""mergekit 0.1.5 (its own venv: ``./dev test`` installs it) as a test oracle.

``./dev test`` (what CI runs) exports SAMMERGE_MERGEKIT (the path of ``mergekit-pytorch``) and
SAMMERGE_REQUIRE_MERGEKIT=1. With either set, a missing or broken mergekit FAILS the parity tests; otherwise (plain
pytest) it is looked up on PATH and in .venv-mergekit, and the tests skip without it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def mergekit_pytorch() -> str:
    """The ``mergekit-pytorch`` command, or skip (fail where it is required) with the reason."""
    given = os.environ.get("SAMMERGE_MERGEKIT")
    required = bool(given) or os.environ.get("SAMMERGE_REQUIRE_MERGEKIT", "0") not in ("", "0")
    if given:
        found = given if os.path.isfile(given) and os.access(given, os.X_OK) else None
        why = f"SAMMERGE_MERGEKIT={given} is not an executable file"
    else:
        local = REPO / ".venv-mergekit" / "bin" / "mergekit-pytorch"
        found = shutil.which("mergekit-pytorch") or (str(local) if local.exists() else None)
        why = "mergekit-pytorch not found on PATH or in .venv-mergekit (./dev test installs mergekit 0.1.5 there)"
    if found is None:
        if required:
            pytest.fail(f"mergekit is required here (SAMMERGE_REQUIRE_MERGEKIT / SAMMERGE_MERGEKIT): {why}")
        pytest.skip(why)
    return found


def run_mergekit(config_path: Path, out_dir: Path, prelude: str = "") -> Path:
    """Run mergekit-pytorch on a YAML config (``prelude``: Python run first in mergekit's interpreter, e.g. to
    replace its random source); returns the merged safetensors file."""
    exe = mergekit_pytorch()
    if prelude:
        python = Path(exe).with_name("python")
        cmd = [str(python), "-c", prelude + "\nimport sys\nfrom mergekit.scripts.merge_raw_pytorch import main\n"
               "sys.argv = ['mergekit-pytorch', *sys.argv[1:]]\nmain()", str(config_path), str(out_dir)]
    else:
        cmd = [exe, str(config_path), str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"mergekit-pytorch failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return out_dir / "model.safetensors"
