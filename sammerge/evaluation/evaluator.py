"""Fast evaluation of encoder parameters with each task's frozen head.

No model copies: one module, parameters swapped in with ``torch.func.functional_call``. All tasks'
images go through the (shared, merged) encoder in one forward pass; each task's head reads its own
slice. Many parameter settings can be evaluated in one batched pass (``torch.func.vmap``), and results
are cached by a hash of the parameters.

``precision``: "fp32" (default; exact), "bf16" (the encoder forward under bf16 autocast, on any device) or "auto"
(bf16 on CUDA, fp32 elsewhere and for linearized zoos, whose f(θ0) + J Δ stays fp32). Features are cast back to
fp32 before the heads: logits, loss and accuracy are always computed in fp32.

``compile``: run the fp32 forward through ``torch.compile`` once it has been compiled in the background
(``sammerge.evaluation.compiled``), its chunks shared by ``workers`` CPU threads; predictions equal the eager ones
(features within ~1e-6). The app turns it on.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from sammerge.errors import ConfigError
from sammerge.evaluation.compiled import CompiledForward, warm_up_from_zoo
from sammerge.models.linearize import linearized_call
from sammerge.models.model import Head, pick_device

Params = Mapping[str, torch.Tensor]
PRECISIONS = ("fp32", "bf16", "auto")
CPU_CHUNK = 256  # images per CPU forward (benchmarks/merge_eval.py times the alternatives)
COMPILE_MAX_EAGER_S = 3.0  # compile only encoders whose eager pass over the evaluation set is at most this


@dataclass(frozen=True)
class TaskResult:
    accuracy: float
    loss: float
    n: int


def params_digest(params: Params) -> str:
    """sha1 over keys, shapes and bytes: a cache key that changes whenever any weight changes."""
    digest = hashlib.sha1()
    for key in sorted(params):
        value = params[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


class Evaluator:
    """Per-task accuracy and loss of encoder parameters on fixed, deterministic evaluation subsets."""

    def __init__(self, encoder: nn.Module, heads: Mapping[str, Head],
                 data: Mapping[str, tuple[torch.Tensor, torch.Tensor]], device: str | torch.device = "cpu",
                 cache_size: int = 512, chunk_size: int = CPU_CHUNK, linearize_at: Params | None = None,
                 precision: str = "fp32", compile: bool = False, workers: int = 1,
                 compile_warm_up=None) -> None:
        if not data:
            raise ConfigError("evaluation: no tasks to evaluate")
        if precision not in PRECISIONS:
            raise ConfigError(f"evaluation: unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
        missing = [t for t in data if t not in heads]
        if missing:
            raise ConfigError(f"evaluation: no head for task '{missing[0]}'")
        self.device = pick_device(device) if isinstance(device, str) else torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        # a linearized zoo's θ is evaluated as f(θ0) + J f(θ0)(θ − θ0) (sammerge.models.linearize)
        self.linearize_at = None if linearize_at is None else {k: v.to(self.device) for k, v in linearize_at.items()}
        if precision == "bf16" and linearize_at is not None:
            raise ConfigError("evaluation: precision 'bf16' is not available for a linearized zoo (its Jacobian-vector "
                              "product stays fp32); use fp32 or auto")
        self.precision = precision
        # the dtype the encoder forward runs in (autocast), None: fp32; "auto" keeps a linearized zoo in fp32
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" or (
            precision == "auto" and self.device.type == "cuda" and linearize_at is None) else None
        self.tasks = list(data)
        self.heads = {t: heads[t].to(self.device) for t in self.tasks}
        images, labels, self.slices = [], [], {}
        start = 0
        for task in self.tasks:
            x, y = data[task]
            self.slices[task] = slice(start, start + len(y))
            start += len(y)
            images.append(x)
            labels.append(y)
        self.images = torch.cat(images).to(self.device)
        self.labels = torch.cat(labels).to(self.device)
        self._cache: OrderedDict[str, dict[str, TaskResult]] = OrderedDict()
        self.cache_size = cache_size
        self.chunk_size = chunk_size  # images per CPU forward: small enough for the activations to stay in cache
        self.forward_count = 0  # number of encoder forward passes over the evaluation set
        # ``compile``: the fp32 forward through torch.compile once a background compile is done (eager until then);
        # ``workers``: CPU threads that share its chunks, one torch thread each
        # weights the encoder keeps channels-last (sammerge.models.lite0_tail): merged parameters arrive contiguous
        # and are given the module's layout for the eager forward (4× the throughput of the Lite0 tail on a CPU)
        # (by strides: a depthwise or 1×1 kernel is "contiguous" in both layouts, yet convolution picks its kernel
        # by the strides it sees)
        self.channels_last = {name for name, t in self.encoder.state_dict().items()
                              if t.dim() == 4 and t.stride() != torch.empty(t.shape, device="meta").stride()}
        self.compiled = None
        # a channels-last encoder stays eager: the compiled forward (exported with standard-layout weights) made the
        # Lite0 zoo's browser moves 5× slower (median 826 vs 163 ms, benchmarks/browser_latency.py)
        if compile and self.linearize_at is None and self.autocast_dtype is None and not self.channels_last:
            chunk = min(self.chunk_size, len(self.images)) if self.device.type == "cpu" else len(self.images)
            self.compiled = CompiledForward(self.encoder, chunk, workers=workers if self.device.type == "cpu" else 1,
                                            warm_up=compile_warm_up)

    @classmethod
    def from_zoo(cls, zoo, split: str = "val", n_per_task: int | None = 256, seed: int = 0,
                 tasks: Sequence[str] | None = None, device: str | torch.device = "auto",
                 chunk_size: int = CPU_CHUNK, precision: str = "fp32", compile: bool = False,
                 workers: int = 1) -> "Evaluator":
        """Evaluation subsets of ``n_per_task`` images per task (None: the whole split), fixed by ``seed``.

        ``device="auto"`` evaluates on CUDA when available, else on the CPU; ``precision`` and ``compile`` as in
        the module doc.
        """
        if split not in ("train", "val", "test"):
            raise ConfigError(f"evaluation split must be train, val or test, not '{split}'")
        tasks = list(tasks) if tasks is not None else zoo.tasks
        unknown = [t for t in tasks if t not in zoo.tasks]
        if unknown:
            raise ConfigError(f"unknown task '{unknown[0]}' (zoo has: {', '.join(zoo.tasks)})")
        data = {}
        for task in tasks:
            part = zoo.split(task, split)
            if n_per_task is not None and n_per_task < len(part.labels):
                part = part.subset(n_per_task, seed)
            data[task] = (part.images, part.labels)
        linearize_at = zoo.pretrained() if zoo.manifest.linearized else None
        # forward passes only: timm's fused attention (sammerge.zoo.Zoo.create_encoder turns it off for analytics)
        # compiling: in a child process that rebuilds this encoder from the zoo; this one only loads (compiled.py)
        return cls(zoo.create_encoder(fused_attention=True), zoo.heads, data, device=device, chunk_size=chunk_size,
                   linearize_at=linearize_at, precision=precision, compile=compile, workers=workers,
                   compile_warm_up=warm_up_from_zoo(zoo.path) if compile else None)

    def _forward(self, params: Params, images: torch.Tensor) -> torch.Tensor:
        """Encoder features of ``images`` (fp32; computed under bf16 autocast when ``autocast_dtype`` is set)."""
        if self.autocast_dtype is None:
            return self._call(params, images)
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
            feats = self._call(params, images)
        return feats.float()

    def _call(self, params: Params, images: torch.Tensor) -> torch.Tensor:
        if self.linearize_at is None:
            return functional_call(self.encoder, params, (images,))
        return linearized_call(self.encoder, self.linearize_at, params, images)

    # -- single configuration -------------------------------------------------------------------
    @torch.inference_mode()
    def features(self, params: Params) -> torch.Tensor:
        self.forward_count += 1
        params = {k: v.to(self.device) for k, v in params.items()}
        if self.compiled is not None:
            feats = self.compiled(params, self.images)
            if feats is not None:
                return feats
        if self.channels_last:
            params = {k: v.to(memory_format=torch.channels_last) if k in self.channels_last else v
                      for k, v in params.items()}
        start = time.perf_counter()
        if self.device.type != "cpu" or len(self.images) <= self.chunk_size:
            feats = self._forward(params, self.images)
        else:
            feats = torch.cat([self._forward(params, self.images[i:i + self.chunk_size])
                               for i in range(0, len(self.images), self.chunk_size)])
        if self.compiled is not None and self.compiled.status == "not started":
            # compile in the background only where its warm-up forward is cheap: a ViT on a CPU would spend a minute
            # of the same cores on it while the page shows estimates
            if time.perf_counter() - start <= COMPILE_MAX_EAGER_S:
                self.compiled.start(params, self.images)
            else:
                self.compiled.status = f"off: one eager pass took over {COMPILE_MAX_EAGER_S:g} s"
        return feats

    def score(self, feats: torch.Tensor) -> dict[str, TaskResult]:
        """Per-task accuracy and loss of encoder features [N, D] of the evaluation images (rows in task order)."""
        out = {}
        for task in self.tasks:
            sl = self.slices[task]
            logits = self.heads[task](feats[sl])
            labels = self.labels[sl]
            out[task] = TaskResult(accuracy=float((logits.argmax(1) == labels).float().mean()),
                                   loss=float(F.cross_entropy(logits, labels)), n=len(labels))
        return out

    def evaluate(self, params: Params, key: str | None = None) -> dict[str, TaskResult]:
        """{task: TaskResult(accuracy, loss, n)} for one set of encoder parameters (cached)."""
        key = key or params_digest(params)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with torch.inference_mode():
            result = self.score(self.features(params))
        self._remember(key, result)
        return result

    def _remember(self, key: str, result: dict[str, TaskResult]) -> None:
        self._cache[key] = result
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # -- many configurations in one batched pass ------------------------------------------------
    def evaluate_many(self, params_list: Sequence[Params], chunk_size: int = 8,
                      strategy: str = "auto") -> list[dict[str, TaskResult]]:
        """Evaluate K parameter settings (cached ones are not recomputed).

        ``strategy``: "vmap" stacks ``chunk_size`` settings and runs them in one vmapped pass; "loop"
        runs them one after the other through the chunked forward. "auto" = vmap on GPU, loop on CPU,
        where the benchmark (benchmarks/merge_eval.py) measured vmap's grouped convolutions slower.
        """
        if strategy not in ("auto", "vmap", "loop"):
            raise ConfigError(f"evaluate_many: unknown strategy '{strategy}' (auto, vmap, loop)")
        if strategy == "auto":
            strategy = "vmap" if self.device.type == "cuda" else "loop"
        keys = [params_digest(p) for p in params_list]
        # results are collected here, not read back from the cache: K settings may be more than the cache holds
        found = {k: self._cache[k] for k in keys if k in self._cache}
        todo = [i for i, k in enumerate(keys) if k not in found]
        if strategy == "loop":
            for i in todo:
                if keys[i] not in found:
                    found[keys[i]] = self.evaluate(params_list[i], key=keys[i])
            return [found[k] for k in keys]
        for start in range(0, len(todo), chunk_size):
            idx = todo[start:start + chunk_size]
            stacked = {k: torch.stack([params_list[i][k] for i in idx]).to(self.device) for k in params_list[idx[0]]}
            for i, result in zip(idx, self._evaluate_stacked(stacked)):
                self._remember(keys[i], result)
                found[keys[i]] = result
        return [found[k] for k in keys]

    @torch.inference_mode()
    def _evaluate_stacked(self, stacked: Params) -> list[dict[str, TaskResult]]:
        self.forward_count += next(iter(stacked.values())).shape[0]
        feats = vmap(lambda p: self._forward(p, self.images))(dict(stacked))
        return [self.score(f) for f in feats]


def mean_accuracy(result: Mapping[str, TaskResult]) -> float:
    """Mean accuracy over the tasks of one result."""
    return sum(r.accuracy for r in result.values()) / len(result)
