"""The encoder forward compiled with ``torch.compile`` (inductor), prepared in a background thread.

Weights change with every merge, so they stay graph inputs (no freezing): one compiled graph serves every merge.
Images go through in chunks of one fixed size (the last chunk padded with zeros, its extra rows dropped: every
encoder here treats samples independently), so the graph is compiled once. Until it is ready — or when compiling
fails, e.g. without a C++ compiler, or a call would need another graph — the caller runs the eager forward: the
compiled path is an optimisation, never a requirement.

``workers`` > 1 runs the chunks on that many threads, each with one torch thread and its own copy of the encoder
and its own compiled function (``functional_call`` swaps a module's tensors, so no module is shared between
threads). On a small CPU this scales where torch's own intra-op threads do not: their OpenMP workers spin between
operators and took the core the web server needed (ui.server_torch_threads). The graphs run in dynamo's run-only
mode: a call never triggers a compile; should a guard fail, that worker's private copy answers eagerly.
On the demo zoo's ResNet-GN inductor fuses GroupNorm, ReLU and the residual adds around oneDNN convolutions;
benchmarks/merge_eval.py measures it against the eager engine and the naive loop.

Compiling must never overlap another thread's forward: while AOT autograd traces (``torch.fx`` Tracer.trace) it
patches ``torch.nn.Module.__call__`` for the whole process, and a module called meanwhile from another thread
fails ("NameError: module is not installed as a submodule"; seen in benchmarks/soak.py as a merge error that took
a session's slider with it). So the cold compile runs in a child process (``warm_up``, e.g.
:func:`warm_up_from_zoo`) that only fills inductor's on-disk caches; the compile in this process then finds every
graph there (no tracing, ~3 s instead of ~20 s on the demo) and still runs inside ``exclusive()`` — the
explorer's evaluation lock at background priority — so no evaluation of this process runs beside it.
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, ContextManager, Mapping

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
    import os
    env = os.environ.get("SAMMERGE_FORWARD_WORKERS", "")
    return max(1, int(env)) if env.isdigit() else max(1, min(4, os.cpu_count() or 1))


def _one_torch_thread() -> None:
    torch.set_num_threads(1)  # this thread only (OpenMP's setting is per thread): the caller's count is untouched


def compile_runs(encoder: torch.nn.Module, params: Params, sample: torch.Tensor, copies: int) -> list[Callable]:
    """``copies`` run-only compiled forwards ``(params, x) ↦ encoder(x)``, each on its own copy of ``encoder``,
    warmed up on ``sample``; the first compile fills inductor's caches, the others (and a later process) reuse them."""
    runs = []
    for _ in range(copies):
        private = copy.deepcopy(encoder)
        fn = torch.compile(lambda p, x, encoder=private: functional_call(encoder, p, (x,)), dynamic=False)
        with torch.inference_mode():
            fn(params, sample)
        runs.append(torch._dynamo.run(fn))
    return runs


def compile_inputs(params: Params, sample: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Fresh copies made under inference mode: a compiled graph's guards see the same kind of tensor every call,
    in this process and in the warm-up child (a caller's tensors may or may not be inference tensors)."""
    with torch.inference_mode():
        return sample.clone(), {k: v.detach().clone() for k, v in params.items()}


WARM_UP_TIMEOUT_S = 900.0


def warm_up_from_zoo(zoo_path: str | os.PathLike) -> Callable[[torch.Tensor, int], None]:
    """A ``warm_up`` for :class:`CompiledForward`: compile the zoo encoder's forward for ``sample``'s shape with
    ``threads`` torch threads in a child process (``python -m sammerge.evaluation.warm_compile``, niced), filling
    inductor's on-disk caches for this process. Raises RuntimeError with the child's last words if it fails."""
    def warm_up(sample: torch.Tensor, threads: int) -> None:
        command = [sys.executable, "-m", "sammerge.evaluation.warm_compile", str(Path(zoo_path)),
                   "--shape", ",".join(str(n) for n in sample.shape), "--dtype", str(sample.dtype).split(".")[-1],
                   "--threads", str(threads)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=WARM_UP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"warm-up compile took over {WARM_UP_TIMEOUT_S:g} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise RuntimeError(f"warm-up compile: {last[:200]}")
    return warm_up


class CompiledForward:
    """``features(params, images)`` through compiled encoders; ``None`` while not ready (the caller goes eager)."""

    def __init__(self, encoder: torch.nn.Module, chunk_size: int, workers: int = 1,
                 warm_up: Callable[[torch.Tensor, int], None] | None = None) -> None:
        self.encoder = encoder
        # ``warm_up(sample, threads)``: compiles the same graph in another process first (module doc); None: the
        # cold compile runs here, inside ``exclusive()`` all the way
        self.warm_up = warm_up
        # what keeps this process's forwards out while compiling here (set by the owner of the evaluation lock)
        self.exclusive: Callable[[], ContextManager] = contextlib.nullcontext
        self.chunk_size = chunk_size
        self.workers = max(1, workers)
        self.status = "not started"  # → "compiling" → "ready" | "failed: …" | "off: …"
        self.compile_s: float | None = None
        self.exclusive_s: float | None = None  # of which this process compiled inside ``exclusive()``
        self.calls = 0  # forwards answered by the compiled path
        self._runs: list[Callable] = []  # one run-only compiled function per worker
        self._signature: tuple | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._run_locks = [threading.Lock() for _ in range(self.workers)]  # one call per private encoder at a time
        self._lock = threading.Lock()
        self._ready = threading.Event()

    @staticmethod
    def signature(params: Params, images: torch.Tensor) -> tuple:
        """What one compiled graph is specialised to: parameter names, shapes, dtypes, devices; image shape."""
        return (tuple((k, tuple(v.shape), v.dtype, v.device.type) for k, v in sorted(params.items())),
                tuple(images.shape[1:]), images.dtype, images.device.type)

    def start(self, params: Params, images: torch.Tensor) -> None:
        """Compile in a background thread, warmed up on one chunk of ``images`` (only the first call starts it)."""
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
        if self.workers > 1:
            _one_torch_thread()  # inductor builds its C++ kernels for the compiling thread's thread count
        try:
            if self.warm_up is not None:
                self.warm_up(sample, torch.get_num_threads())
            with self.exclusive():
                held = time.perf_counter()
                runs = compile_runs(self.encoder, params, sample, self.workers)
                self.exclusive_s = time.perf_counter() - held
            if self.workers > 1:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sammerge-forward",
                                                initializer=_one_torch_thread)
            self._runs, self._signature = runs, self.signature(params, sample)
            self.compile_s = time.perf_counter() - start
            self.status = "ready"
        except Exception as exc:  # noqa: BLE001 - compiling is optional: report it, stay eager
            self.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finally:
            self._ready.set()

    def describe(self) -> str:
        """How merges are evaluated right now: the compiled forward, eager while it compiles, or why eager."""
        if self.status == "ready":
            return "forward compiled by torch.compile"
        if self.status in ("not started", "compiling"):
            return "eager forward while torch.compile prepares a faster one"
        return f"eager forward (torch.compile {self.status})"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until compiling ended (ready or failed); True when the compiled forward is ready."""
        self._ready.wait(timeout)
        return self.status == "ready"

    def _pad(self, chunk: torch.Tensor) -> torch.Tensor:
        """``chunk`` as a fresh inference tensor of exactly ``chunk_size`` rows (zeros appended)."""
        missing = self.chunk_size - len(chunk)
        if missing <= 0:
            return chunk.clone()
        return torch.cat([chunk, chunk.new_zeros((missing, *chunk.shape[1:]))])

    def _inputs(self, params: Params, chunk: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:func:`compile_inputs` of one padded chunk (the copies cost ~1 ms of a ~50 ms forward)."""
        return compile_inputs(params, self._pad(chunk))

    def _run_chunks(self, worker: int, params: Params, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        run = self._runs[worker]
        with self._run_locks[worker], torch.inference_mode():
            return [run(params, self._pad(c))[:len(c)] for c in chunks]

    def __call__(self, params: Params, images: torch.Tensor) -> torch.Tensor | None:
        """Features of ``images`` (call under ``torch.inference_mode``), or None when the eager path must answer."""
        if not self._runs or self.signature(params, images[:1]) != self._signature:
            return None
        params = {k: v.detach().clone() for k, v in params.items()}  # inference tensors, as in the warm-up
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
