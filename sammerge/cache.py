"""Results cached with a zoo, in ``ZOO/analysis/``: :func:`cached` keeps a JSON-able result per (kind, inputs,
the zoo's checkpoint hashes) in ``ZOO/analysis/cache/{kind}-{key}.json``. Analyses, diagnostics, the paper table, the
linearized preview and the sweeps all live below :func:`analysis_dir`."""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from sammerge.errors import ZooError
from sammerge.io import atomic_write_text

__all__ = ["analysis_dir", "cache_key", "cached", "torch_threads", "jsonable", "write_json", "ANALYSIS_FORMAT"]

ANALYSIS_FORMAT = 1


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op CPU threads (None or 0: leave as is). The analytics run many
    small double-backward passes that scale badly across threads (measured on the 2-core dev box
    under load: one thread 4–10× faster than two), so analyze_zoo uses one thread by default."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def analysis_dir(zoo) -> Path:
    return Path(zoo.path) / "analysis"


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if not np.isfinite(v) else v
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj


def write_json(path: Path, data: dict) -> None:
    try:
        atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False))
    except OSError as exc:
        raise ZooError(f"{path}: cannot write analysis ({exc.strerror or exc})") from exc


def cache_key(zoo, kind: str, inputs: Mapping[str, Any]) -> str:
    payload = json.dumps({"kind": kind, "format": ANALYSIS_FORMAT, "zoo": zoo.checkpoint_hashes(),
                          "inputs": jsonable(dict(inputs))}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cached(zoo, kind: str, inputs: Mapping[str, Any], compute: Callable[[], dict], use_cache: bool = True,
           threads: int | None = 1, cached_only: bool = False) -> dict | None:
    """Return ``compute()`` (a JSON-able dict), cached in ``ZOO/analysis/cache/{kind}-{key}.json``.

    The file holds ``{"kind", "key", "result"}``; an entry that does not parse, lacks those fields or
    was written for another key (truncated, emptied, overwritten, an older format) is recomputed and
    rewritten, not returned. ``use_cache=False`` neither reads nor writes the cache; ``cached_only=True``
    returns None instead of computing (pages use it to show what is already on disk without a click)."""
    key = cache_key(zoo, kind, inputs)
    path = analysis_dir(zoo) / "cache" / f"{kind}-{key[:24]}.json"
    if use_cache and path.is_file():
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            entry = None  # unreadable or corrupt entry: recompute
        if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("result"), dict):
            return entry["result"]
    if cached_only:
        return None
    with torch_threads(threads):
        result = jsonable(compute())
    if use_cache:
        try:
            write_json(path, {"kind": kind, "key": key, "result": result})
        except ZooError:
            pass  # read-only zoo: still return the result
    return result
