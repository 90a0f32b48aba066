"""The zoos that ship with sammerge: the glyph demo (``assets/demo_zoo``) opens at once, no training; the
EfficientNet-Lite0 zoo on real images (``assets/lite0_zoo``, :func:`ensure_lite0_zoo`) too.

``scripts/ship_demo_zoo.py`` builds it from the ``demo`` preset, precomputes its analyses, λ sweeps and
paper table, and copies it here. On first use the app (``ensure_zoo``) installs a copy into the user's
zoo cache — so caches written later never touch the package — provided the shipped zoo was built from
the current recipe and benchmark data (same recipe fingerprint); otherwise the preset is rebuilt.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from sammerge.errors import CheckpointError, ZooError
from sammerge.io import atomic_dir

SHIPPED_PRESET = "demo"


def shipped_zoo_dir() -> Path:
    """``<repo>/assets/demo_zoo`` ($SAMMERGE_DEMO_ZOO overrides it; an empty value: no shipped zoo)."""
    env = os.environ.get("SAMMERGE_DEMO_ZOO")
    if env is not None:
        return Path(env) if env else Path("/nonexistent-sammerge-demo-zoo")
    return Path(__file__).resolve().parent.parent / "assets" / "demo_zoo"


def shipped_zoo(preset: str, fingerprint: str):
    """The shipped zoo for ``preset`` if it exists and was built from the recipe with ``fingerprint``, else None."""
    from sammerge.zoo import open_zoo

    if preset != SHIPPED_PRESET or not (shipped_zoo_dir() / "zoo.json").is_file():
        return None
    try:
        zoo = open_zoo(shipped_zoo_dir())
    except (ZooError, CheckpointError):
        return None
    return zoo if zoo.manifest.recipe_fingerprint == fingerprint else None


def shipped_zoo_for(preset: str):
    """The shipped zoo if it matches ``preset``'s current recipe and the installed benchmark data, else None."""
    from sammerge.data import load_benchmark
    from sammerge.models.presets import get_preset
    from sammerge.zoo import data_sha256

    if preset != SHIPPED_PRESET:
        return None
    return shipped_zoo(preset, get_preset(preset).fingerprint(data_sha256(load_benchmark())))


def install_shipped_zoo(preset: str, fingerprint: str, target: str | os.PathLike):
    """Copy the matching shipped zoo to ``target`` (atomically, every file hash-verified); None if none matches."""
    source = shipped_zoo(preset, fingerprint)
    if source is None:
        return None
    try:
        return copy_verified(source.path, target)
    except (ZooError, CheckpointError, OSError) as exc:  # a damaged installation: build instead
        warnings.warn(f"the shipped demo zoo {source.path} is damaged ({exc}); building the preset instead")
        return None


def copy_verified(source: Path, target: str | os.PathLike):
    """Copy the zoo at ``source`` to ``target`` atomically, every file hash-verified in the copy; the opened copy."""
    from sammerge.zoo import open_zoo

    with atomic_dir(Path(target), overwrite=True) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, copy_function=shutil.copyfile)
        for path in tmp.rglob("*"):  # the package may be read-only; the user's copy must be writable
            path.chmod(0o755 if path.is_dir() else 0o644)
        open_zoo(tmp, verify=True)
    return open_zoo(target)


# -- the second shipped demo: EfficientNet-Lite0 on real images (sammerge.training.lite0_zoo) ------------------------
def shipped_lite0_dir() -> Path:
    """``<repo>/assets/lite0_zoo`` ($SAMMERGE_LITE0_ZOO overrides it; an empty value: none shipped)."""
    env = os.environ.get("SAMMERGE_LITE0_ZOO")
    if env is not None:
        return Path(env) if env else Path("/nonexistent-sammerge-lite0-zoo")
    return Path(__file__).resolve().parent.parent / "assets" / "lite0_zoo"


def lite0_shipped() -> bool:
    return (shipped_lite0_dir() / "zoo.json").is_file()


def ensure_lite0_zoo(root: str | os.PathLike, verify: bool = False):
    """The shipped Lite0 zoo, installed into the zoo cache ``root`` (the app's: ``training.build.default_zoo_dir()``)
    on first use and opened from there — analyses write into the copy, never the package; installed again when the
    shipped files change, or, with ``verify``, when a file of the copy no longer matches its sha256. ZooError or
    CheckpointError when the shipped zoo is missing or damaged."""
    from sammerge.zoo import open_zoo

    if not lite0_shipped():
        raise ZooError(f"{shipped_lite0_dir()}: no EfficientNet-Lite0 zoo is shipped with this installation")
    source = open_zoo(shipped_lite0_dir())
    target = Path(root) / source.manifest.name
    if (target / "zoo.json").is_file():
        try:
            installed = open_zoo(target, verify=verify)
            if installed.checkpoint_hashes() == source.checkpoint_hashes():
                return installed
        except (ZooError, CheckpointError):
            pass  # damaged or older: install again
    return copy_verified(source.path, target)
