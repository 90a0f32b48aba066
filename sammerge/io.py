"""Safe, atomic file I/O: safetensors (and weights-only torch files, read), no pickle, temp-file-then-rename writes."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sammerge.errors import CheckpointError, ConfigError

PathLike = str | os.PathLike


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(path: PathLike) -> str:
    """sha256 of a file, or of a folder (its files' relative names and sha256, sorted) — HF model folders."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode())
        digest.update(sha256_file(f).encode())
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


def read_metadata(path: PathLike) -> dict[str, str]:
    """The metadata :func:`save_state_dict` stored (its one ``sammerge`` header entry); {} when there is none.
    Raises what safetensors or json raise on an unreadable file (OSError, ValueError)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        return json.loads((handle.metadata() or {}).get("sammerge", "{}"))


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


# -- reading users' torch files without running pickled code ------------------------------------------
DEFAULT_MAX_FILE_BYTES = 16 << 30
MAX_BYTES_ENV = "SAMMERGE_MAX_FILE_BYTES"
CONVERSION_HINT = ("convert it once in an environment you trust: "
                   "`sd = torch.load(path, weights_only=False); safetensors.torch.save_file("
                   "{k: v.contiguous() for k, v in sd.state_dict().items()} if hasattr(sd, 'state_dict') else sd, out)` "
                   "(README: Import your own checkpoints)")
# modules whose names in a pickle mean "run code when loaded": refused outright, never stubbed
_DANGEROUS_MODULES = ("os", "posix", "nt", "subprocess", "builtins", "__builtin__", "sys", "shutil", "importlib",
                      "runpy", "socket", "pickle", "_pickle", "marshal", "code", "codeop", "pty", "ctypes", "eval",
                      "exec", "webbrowser", "pathlib", "io", "_io", "operator", "functools", "types", "inspect",
                      "torch._dynamo", "torch.hub", "torch.ops", "torch._ops", "numpy.testing")


def max_file_bytes() -> int:
    """The largest file sammerge reads: $SAMMERGE_MAX_FILE_BYTES (bytes) or 16 GiB."""
    raw = os.environ.get(MAX_BYTES_ENV)
    if raw is None:
        return DEFAULT_MAX_FILE_BYTES
    try:
        return int(raw)
    except ValueError:
        from sammerge.errors import ConfigError
        raise ConfigError(f"${MAX_BYTES_ENV}={raw!r} is not a number of bytes") from None


def check_file_size(path: PathLike, limit: int | None = None) -> int:
    """The size of ``path``; CheckpointError when it is over ``limit`` (default :func:`max_file_bytes`)."""
    limit = max_file_bytes() if limit is None else limit
    size = Path(path).stat().st_size
    if size > limit:
        raise CheckpointError(f"{path}: {size / 2**30:.2f} GiB is over the size limit of {limit / 2**30:.2f} GiB "
                              f"(raise it with ${MAX_BYTES_ENV}=<bytes> or --max-file-bytes)")
    return size


class InertObject:
    """Stand-in for a class named in a pickle: holds the attributes the file sets, runs nothing.

    ``__qualified_name__`` is the name the file used (e.g. ``src.modeling.ImageEncoder``).
    """

    __qualified_name__ = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__["_inert_args"] = args

    def __repr__(self) -> str:
        return f"<inert {self.__qualified_name__}>"


def _inert_class(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (InertObject,), {"__qualified_name__": name, "__module__": "sammerge.io.inert"})


def _is_dangerous(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in _DANGEROUS_MODULES)


def is_safetensors_file(path: PathLike) -> bool:
    """True when the first bytes look like a safetensors header (8-byte length, then a JSON object)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0  # truncated ones too


def load_torch_file(path: PathLike, max_bytes: int | None = None):
    """Load a ``torch.save`` zip file with ``weights_only=True`` and return the object it holds.

    Classes the file names (``torch.serialization.get_unsafe_globals_in_checkpoint``) are replaced by inert
    :class:`InertObject` subclasses, so pickled ``nn.Module`` objects come back as plain attribute holders
    (walk them with ``sammerge.importing.pickled``); nothing in the file's own code runs. Raw ``pickle.dump``
    files and legacy (non-zip) torch files are refused with a conversion hint, as are files that name
    code-running functions (``os.system``, ``builtins.eval``, ...). Tensors saved on CUDA load on the CPU.
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    check_file_size(path, max_bytes)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            if handle.read(4) == b"PK\x03\x04":
                raise CheckpointError(f"{path}: unreadable torch file (a truncated or corrupt zip archive)")
        raise CheckpointError(f"{path}: not a safetensors or zip-format torch file (a raw pickle or a legacy "
                              f"torch.save file only loads by running code; sammerge never unpickles) — {CONVERSION_HINT}")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - corrupt archive, truncated file, ...
        raise CheckpointError(f"{path}: unreadable torch file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    dangerous = sorted(n for n in names if _is_dangerous(n))
    if dangerous:
        raise CheckpointError(f"{path}: refused — loading it would call {', '.join(dangerous)} (code in the pickle); "
                              f"sammerge never runs code from checkpoint files")
    stubs = [(_inert_class(n), n) for n in names]
    try:
        with torch.serialization.safe_globals(stubs):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler's refusals and read errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read without running code ({reason}) — {CONVERSION_HINT}") from None


def read_config_text(path: Path) -> str:
    """A config file's text; ConfigError naming the file when it is missing or unreadable."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None


def safe_yaml(text: str, what: str) -> Any:
    """yaml.safe_load; ConfigError naming ``what`` and the line on invalid YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
