"""`sammerge jobs list|cancel PATH`: the job records of a zoo (its build, a build in progress, its sweeps)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sammerge.errors import ConfigError


def register(subparsers) -> None:
    jobs = subparsers.add_parser("jobs", help="list or cancel the jobs of a zoo build or sweep")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="JOBS_COMMAND", required=True)
    ls = jsub.add_parser("list", help="one line per job: status, progress, attempts, time, error")
    ls.add_argument("path", type=Path, help="a zoo directory (or any directory holding .jobs/)")
    ls.add_argument("--all", action="store_true", help="also list finished jobs (default: only unfinished ones "
                                                        "and a count of the finished)")
    ls.set_defaults(func=_list)
    cancel = jsub.add_parser("cancel", help="ask running jobs to stop at their next step")
    cancel.add_argument("path", type=Path)
    cancel.add_argument("job", nargs="?", default=None, help="a job id (prefix); default: every job under PATH")
    cancel.set_defaults(func=_cancel)


def _list(args: argparse.Namespace) -> int:
    from sammerge.jobs import job_roots, list_records
    from sammerge.jobs.record import shown_status

    roots = job_roots(args.path)
    if not roots:
        raise ConfigError(f"{args.path}: no job records (no .jobs/ here, in a build in progress or in analysis/sweeps)")
    for root in roots:
        records = list_records(root)
        shown = [r for r in records if args.all or r.status != "done"]
        print(f"{root}: {len(records)} jobs, {sum(r.status == 'done' for r in records)} done")
        for r in shown:
            pct = f"{100 * r.progress.fraction:5.1f}%"
            took = f"{r.wall_time_s:.1f}s" if r.wall_time_s is not None else "—"
            print(f"  {r.id[:12]}  {shown_status(r):<11} {pct}  {r.kind:<9} {r.name[:44]:<44} attempts={r.attempts} "
                  f"{took:>8}  {r.error or r.progress.stage}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from sammerge.jobs import job_roots, list_records, request_cancel

    roots = job_roots(args.path)
    if not roots:
        raise ConfigError(f"{args.path}: no job records to cancel")
    for root in roots:
        if args.job is None:
            print(f"cancel requested for every job under {root}: {request_cancel(root)}")
            continue
        for r in list_records(root):
            if r.id.startswith(args.job):
                print(f"cancel requested for {r.name} ({r.id[:12]}): {request_cancel(root, r.id)}")
                return 0
    if args.job is not None:
        raise ConfigError(f"no job with id starting '{args.job}' under {args.path}")
    return 0
