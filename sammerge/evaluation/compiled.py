"""The encoder forward compiled with ``torch.compile`` (inductor), prepared in a background thread.

Weights change with every merge, so they stay graph inputs (no freezing): one compiled graph serves every merge.
Images go through in chunks of one fixed size (the last chunk padded with zeros, its extra rows dropped: every
encoder here treats samples independently), so the graph is compiled once. Until it is ready — or when compiling
fails, e.g. without a C++ compiler, or a call would need a new graph — the caller runs the eager forward: the
compiled path is an optimisation, never a requirement. On the demo zoo's ResNet-GN it fuses GroupNorm, ReLU and the
residual adds around oneDNN convolutions; benchmarks/merge_eval.py measures it against eager and the naive loop.
"""
from __future__ import annotations

import copy
import shutil
import threading
import time
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


class CompiledForward:
    """``features(params, images)`` through a compiled encoder; ``None`` while not ready (the caller goes eager)."""

    def __init__(self, encoder: torch.nn.Module, chunk_size: int) -> None:
        self.encoder = encoder
        self.chunk_size = chunk_size
        self.status = "not started"  # → "compiling" → "ready" | "failed: …" | "off: …"
        self.compile_s: float | None = None
        self.calls = 0  # forwards answered by the compiled graph
        self._fn: Callable | None = None
        self._signature: tuple | None = None
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
        try:
            encoder = copy.deepcopy(self.encoder)  # functional_call swaps a module's tensors: never share one
            fn = torch.compile(lambda p, x: functional_call(encoder, p, (x,)), dynamic=False)
            with torch.inference_mode():
                fn(params, sample)
            self._fn, self._signature = fn, self.signature(params, sample)
            self.compile_s = time.perf_counter() - start
            self.status = "ready"
        except Exception as exc:  # noqa: BLE001 - compiling is optional: report it, stay eager
            self.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finally:
            self._ready.set()

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
        """Fresh copies made under inference mode: the graph's guards see the same kind of tensor every call
        (a caller's tensors may or may not be inference tensors; the copies cost ~1 ms of a ~50 ms forward)."""
        return self._pad(chunk), {k: v.detach().clone() for k, v in params.items()}

    def __call__(self, params: Params, images: torch.Tensor) -> torch.Tensor | None:
        """Features of ``images`` (call under ``torch.inference_mode``), or None when the eager path must answer."""
        fn = self._fn
        if fn is None or self.signature(params, images[:1]) != self._signature:
            return None
        out = []
        params = {k: v.detach().clone() for k, v in params.items()}  # inference tensors, as in the warm-up
        try:
            with torch.compiler.set_stance("fail_on_recompile"):  # a new graph would stall this call for seconds
                for i in range(0, len(images), self.chunk_size):
                    chunk = images[i:i + self.chunk_size]
                    out.append(fn(params, self._pad(chunk))[:len(chunk)])
        except Exception:  # noqa: BLE001 - a guard failed (recompile refused) or the graph broke: eager answers
            return None
        self.calls += 1
        return torch.cat(out)
