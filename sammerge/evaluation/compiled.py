"""The encoder forward compiled ahead of time by AOTInductor in a child process; the server only loads it.

Weights change with every merge, so they stay graph inputs: one compiled package serves every merge. Images go
through in chunks of one fixed size (the last chunk padded with zeros, its extra rows dropped: every encoder here
treats samples independently), so one package fits every call. Until it is ready — or when compiling fails, e.g.
without a C++ compiler, or a call would need another graph — the caller runs the eager forward: the compiled path is
an optimisation, never a requirement.

Nothing is traced or compiled in the server process. ``python -m sammerge.evaluation.warm_compile`` (niced) rebuilds
the zoo's encoder, exports ``(params, x) ↦ encoder(x)`` with ``torch.export`` and compiles it with AOTInductor into a
``.pt2`` package in the compile cache (``$SAMMERGE_COMPILE_CACHE``, default ``~/.cache/sammerge/compiled``; keyed
by :func:`package_key`, written atomically); the server loads it (a shared library, milliseconds) and calls it.
Why not ``torch.compile`` in the server: AOT autograd's tracing patches ``torch.nn.Module.__call__`` for the whole
process, so a module called meanwhile from another thread failed ("NameError: module is not installed as a
submodule"), and compiling inside the evaluation lock to keep other forwards out held every session's merges for as
long as the compile took — 241 s once on 2 busy cores (benchmarks/soak.py), with five sessions never shown a number.

``workers`` > 1 runs the chunks on that many threads, each with one torch thread and its own loaded copy of the
package. On a small CPU this scales where torch's own intra-op threads do not: their OpenMP workers spin between
operators and took the core the web server needed (ui.server_torch_threads).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch.func import functional_call

Params = Mapping[str, torch.Tensor]


def compiler_missing() -> str | None:
    """Why inductor cannot compile for the CPU here (no C++ compiler), or None."""
    try:
        from torch._inductor import config
        cxx = config.cpp.cxx[-1] if isinstance(config.cpp.cxx, (tuple, list)) else config.cpp.cxx
    except Exception:  # noqa: BLE001 - an inductor without this setting: let compiling find out
        return None
    names = [cxx] if cxx else ["g++", "c++", "clang++"]
    return None if any(shutil.which(n) for n in names) else f"no C++ compiler found ({', '.join(names)})"


def default_workers() -> int:
    """Threads that share the compiled forward's chunks, one torch thread each: every core, at most 4
    ($SAMMERGE_FORWARD_WORKERS overrides). On 2 cores two such threads took a demo evaluation (4 × 256 images) from
    ≈ 130 ms with one torch thread to ≈ 70 ms, where two torch threads inside one forward made the app's pages
    slower (sammerge.webapp.ui.server_torch_threads)."""
    env = os.environ.get("SAMMERGE_FORWARD_WORKERS", "")
    return max(1, int(env)) if env.isdigit() else max(1, min(4, os.cpu_count() or 1))


def _one_torch_thread() -> None:
    torch.set_num_threads(1)  # this thread only (OpenMP's setting is per thread): the caller's count is untouched


def compile_cache_dir() -> Path:
    return Path(os.environ.get("SAMMERGE_COMPILE_CACHE", Path.home() / ".cache" / "sammerge" / "compiled"))


def signature(params: Params, images: torch.Tensor) -> tuple:
    """What one compiled package is specialised to: parameter names, shapes, dtypes, devices; image shape."""
    return (tuple((k, tuple(v.shape), v.dtype, v.device.type) for k, v in sorted(params.items())),
            tuple(images.shape[1:]), images.dtype, images.device.type)


def package_key(encoder: torch.nn.Module, params: Params, sample: torch.Tensor, threads: int) -> str:
    """sha256 of what the compiled code depends on: the module structure (``repr``: layers and their settings), the
    signature, the chunk size, the torch version and the threads its kernels were built for."""
    text = repr((repr(encoder), signature(params, sample), tuple(sample.shape), torch.__version__, threads))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class _Forward(torch.nn.Module):
    """``(params, x) ↦ encoder(x)`` with ``params`` swapped in (the exported program's inputs)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.encoder, params, (x,))


def build_package(encoder: torch.nn.Module, params: Params, sample: torch.Tensor, path: Path) -> Path:
    """Export and AOT-compile the forward for ``sample``'s shape into ``path`` (written atomically). Call in a
    process of its own (:mod:`sammerge.evaluation.warm_compile`): exporting traces (module doc)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.export.export(_Forward(encoder).eval(), (dict(params), sample), strict=False)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.pt2")
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def load_package(path: Path) -> Callable:
    """A compiled package as ``fn(params, x)`` (loading runs no tracing and no compiler)."""
    return torch._inductor.aoti_load_package(str(path))


WARM_UP_TIMEOUT_S = 900.0


def warm_up_from_zoo(zoo_path: str | os.PathLike) -> Callable[[torch.Tensor, int, Path], None]:
    """A ``warm_up`` for :class:`CompiledForward`: build the package for ``sample``'s shape with ``threads`` torch
    threads into ``path`` in a child process (``python -m sammerge.evaluation.warm_compile``, niced). Raises
    RuntimeError with the child's last words if it fails."""
    def warm_up(sample: torch.Tensor, threads: int, path: Path) -> None:
        command = [sys.executable, "-m", "sammerge.evaluation.warm_compile", str(Path(zoo_path)),
                   "--shape", ",".join(str(n) for n in sample.shape), "--dtype", str(sample.dtype).split(".")[-1],
                   "--threads", str(threads), "--device", sample.device.type, "--out", str(path)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=WARM_UP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"warm-up compile took over {WARM_UP_TIMEOUT_S:g} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise RuntimeError(f"warm-up compile: {last[:200]}")
    return warm_up


class CompiledForward:
    """``features(params, images)`` through compiled packages; ``None`` while not ready (the caller goes eager)."""

    def __init__(self, encoder: torch.nn.Module, chunk_size: int, workers: int = 1,
                 warm_up: Callable[[torch.Tensor, int, Path], None] | None = None) -> None:
        self.encoder = encoder
        # ``warm_up(sample, threads, path)``: builds the package at ``path`` in another process (module doc); None:
        # only a package already in the cache is used
        self.warm_up = warm_up
        self.chunk_size = chunk_size
        self.workers = max(1, workers)
        self.status = "not started"  # → "compiling" → "ready" | "failed: …" | "off: …"
        self.compile_s: float | None = None  # from start to ready (the child's compile, or a cache hit's load)
        self.load_s: float | None = None  # of which this process spent loading the package
        self.package: Path | None = None
        self.calls = 0  # forwards answered by the compiled path
        self._runs: list[Callable] = []  # one loaded package per worker
        self._signature: tuple | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._run_locks = [threading.Lock() for _ in range(self.workers)]  # one call per loaded copy at a time
        self._lock = threading.Lock()
        self._ready = threading.Event()

    signature = staticmethod(signature)

    def start(self, params: Params, images: torch.Tensor) -> None:
        """Build (or find) and load the package in a background thread, for one chunk of ``images`` (only the first
        call starts it)."""
        with self._lock:
            if self.status != "not started":
                return
            if images.device.type == "cpu" and (why := compiler_missing()):
                self.status = f"off: {why}"
                return
            self.status = "compiling"
        with torch.inference_mode():
            sample, owned = self._inputs(params, images[:self.chunk_size])
        threading.Thread(target=self._compile, args=(owned, sample), name="sammerge-compile", daemon=True).start()

    def _compile(self, params: Params, sample: torch.Tensor) -> None:
        start = time.perf_counter()
        threads = 1 if self.workers > 1 else torch.get_num_threads()  # the kernels' OpenMP threads
        try:
            path = compile_cache_dir() / f"{package_key(self.encoder, params, sample, threads)}.pt2"
            if not path.is_file():
                if self.warm_up is None:
                    raise RuntimeError(f"no compiled package at {path} and nothing to build one")
                self.warm_up(sample, threads, path)
            loaded = time.perf_counter()
            try:
                runs = [load_package(path) for _ in range(self.workers)]
            except Exception as exc:  # noqa: BLE001 - a damaged cache entry: dropped, rebuilt by the next server
                path.unlink(missing_ok=True)
                raise RuntimeError(f"compiled package {path.name} unreadable ({type(exc).__name__}); removed") from None
            self.load_s = time.perf_counter() - loaded
            if self.workers > 1:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sammerge-forward",
                                                initializer=_one_torch_thread)
            self._runs, self._signature, self.package = runs, signature(params, sample), path
            self.compile_s = time.perf_counter() - start
            self.status = "ready"
        except Exception as exc:  # noqa: BLE001 - compiling is optional: report it, stay eager
            self.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finally:
            self._ready.set()

    def describe(self) -> str:
        """How merges are evaluated right now: the compiled forward, eager while it compiles, or why eager."""
        if self.status == "ready":
            return "forward compiled by AOTInductor"
        if self.status in ("not started", "compiling"):
            return "eager forward while AOTInductor compiles a faster one in the background"
        return f"eager forward (compiling {self.status})"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until compiling ended (ready or failed); True when the compiled forward is ready."""
        self._ready.wait(timeout)
        return self.status == "ready"

    def _pad(self, chunk: torch.Tensor) -> torch.Tensor:
        """``chunk`` with exactly ``chunk_size`` rows (zeros appended)."""
        missing = self.chunk_size - len(chunk)
        if missing <= 0:
            return chunk
        return torch.cat([chunk, chunk.new_zeros((missing, *chunk.shape[1:]))])

    def _inputs(self, params: Params, chunk: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One padded chunk and a copy of ``params`` that the background thread owns."""
        return self._pad(chunk).clone(), {k: v.detach().clone() for k, v in params.items()}

    def _run_chunks(self, worker: int, params: Params, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        run = self._runs[worker]
        with self._run_locks[worker], torch.inference_mode():
            return [run(params, self._pad(c))[:len(c)] for c in chunks]

    def __call__(self, params: Params, images: torch.Tensor) -> torch.Tensor | None:
        """Features of ``images`` (call under ``torch.inference_mode``), or None when the eager path must answer."""
        if not self._runs or signature(params, images[:1]) != self._signature:
            return None
        params = {k: v.detach().contiguous() for k, v in params.items()}
        chunks = [images[i:i + self.chunk_size] for i in range(0, len(images), self.chunk_size)]
        if self._pool is None or len(chunks) == 1:
            out = self._run_chunks(0, params, chunks)
        else:  # contiguous shares, one per worker, in order
            n = min(self.workers, len(chunks))
            bounds = [round(i * len(chunks) / n) for i in range(n + 1)]
            futures = [self._pool.submit(self._run_chunks, w, params, chunks[bounds[w]:bounds[w + 1]])
                       for w in range(n)]
            out = [f for fut in futures for f in fut.result()]
        self.calls += 1
        return torch.cat(out)
