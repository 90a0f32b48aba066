"""``python -m sammerge.evaluation.warm_compile ZOO --shape N,C,H,W --threads T --out PACKAGE.pt2``: export a zoo
encoder's forward and compile it with AOTInductor into a package, in this (child) process; the explorer's server
only loads it (:mod:`sammerge.evaluation.compiled` explains why the server never traces).

The program is the one :class:`~sammerge.evaluation.compiled.CompiledForward` calls: the zoo's encoder with timm's
fused attention, θ0's tensors as inputs (any merge's tensors of the same shapes later), one chunk of ``--shape``
images, kernels for ``--threads`` threads, on ``--device``. Runs niced, so the server's threads go first on a small
CPU. Exit status 0 when the package is written (atomically); else a one-line reason.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sammerge.evaluation.warm_compile", description=__doc__)
    parser.add_argument("zoo", help="zoo directory (zoo.json)")
    parser.add_argument("--shape", required=True, help="one chunk of images, e.g. 256,3,32,32")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="the package to write (.pt2)")
    args = parser.parse_args(argv)
    try:
        shape = [int(n) for n in args.shape.split(",")]
    except ValueError:
        print(f"warm_compile: --shape must be integers separated by commas, not '{args.shape}'", file=sys.stderr)
        return 2
    if hasattr(os, "nice"):
        os.nice(10)
    import torch

    from sammerge.errors import SammergeError
    from sammerge.evaluation.compiled import build_package
    from sammerge.zoo import open_zoo

    torch.set_num_threads(max(1, args.threads))
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype):
        print(f"warm_compile: unknown dtype '{args.dtype}'", file=sys.stderr)
        return 2
    try:
        zoo = open_zoo(args.zoo)
        device = torch.device(args.device)
        encoder = zoo.create_encoder(fused_attention=True).to(device).eval()
        for p in encoder.parameters():
            p.requires_grad_(False)  # as the evaluator's encoder
        params = {k: v.to(device) for k, v in zoo.pretrained().items()}
        build_package(encoder, params, torch.zeros(shape, dtype=dtype, device=device), Path(args.out))
    except SammergeError as exc:
        print(f"warm_compile: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the parent reports the reason and stays eager
        print(f"warm_compile: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
