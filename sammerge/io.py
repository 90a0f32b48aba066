"""Safe, atomic file I/O: safetensors only, no pickle, temp-file-then-rename writes."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sammerge.errors import CheckpointError

PathLike = str | os.PathLike


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask_mode(directory: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp make private 0600/0700 temp files)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _temp_file(path: Path) -> tuple[int, str]:
    """A temp file beside ``path`` with the permissions ``path`` would get if written directly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _umask_mode())
    return fd, tmp


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    fd, tmp = _temp_file(Path(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(final_path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside ``final_path``; move it into place only if the block succeeds.

    On any exception the temp directory is removed and ``final_path`` is left untouched.
    """
    final_path = Path(final_path)
    parent = final_path.parent if str(final_path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{final_path.name}.", suffix=".tmp"))
        tmp.chmod(_umask_mode(directory=True))
    except OSError as exc:
        raise CheckpointError(f"{final_path}: cannot create output directory ({exc.strerror or exc})") from exc
    try:
        yield tmp
        if final_path.exists():
            if not overwrite:
                raise CheckpointError(f"{final_path}: already exists (pass overwrite to replace it)")
            backup = parent / f".{final_path.name}.old"
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(final_path, backup)
            os.replace(tmp, final_path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, final_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: PathLike,
                    metadata: Mapping[str, str] | None = None) -> None:
    """Save tensors as safetensors atomically (contiguous CPU copies).

    ``metadata`` is stored as ONE header entry, ``sammerge`` = sorted JSON: safetensors writes its
    metadata map in hash order, so several keys would make the file bytes (and sha256) vary from run
    to run even for identical tensors.
    """
    path = Path(path)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    fd, tmp = _temp_file(path)
    os.close(fd)
    try:
        header = {"sammerge": json.dumps({k: str(v) for k, v in metadata.items()}, sort_keys=True)} if metadata else None
        save_file(tensors, tmp, metadata=header)
        os.chmod(tmp, _umask_mode())  # safetensors recreates the file privately
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming the first key that holds NaN or Inf."""
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            kind = "NaN" if bool(torch.isnan(value).any()) else "Inf"
            raise CheckpointError(f"{source}: tensor '{key}' contains {kind} values")


def load_state_dict(path: PathLike, expected_sha256: str | None = None, device: str = "cpu",
                    check_finite_values: bool = True) -> dict[str, torch.Tensor]:
    """Load a safetensors file, verifying existence, format, optional sha256 and finiteness."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise CheckpointError(
                f"{path}: sha256 mismatch (expected {expected_sha256[:12]}…, got {actual[:12]}…)")
    try:
        state_dict = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a valid safetensors file ({reason})") from exc
    if check_finite_values:
        check_finite(state_dict, str(path))
    return state_dict
