"""What a shipped zoo carries so that its pages open without a click (scripts/ship_*_zoo.py)."""
from __future__ import annotations


def warm_caches(zoo) -> None:
    """Compute what the pages show by default, into ``ZOO/analysis`` (the pages read it without a click): the
    analysis (``sammerge analyze`` defaults), each variant's 1-D curve, task plane and random plane, the paper table,
    the explorer's default λ sweeps and the regime diagnostics (scripts/ship_*_zoo.py)."""
    from sammerge.analytics import report as an
    from sammerge.explorer.service import Explorer

    if an.load_analysis(zoo) is None:
        print("analysis (sammerge analyze defaults) …", flush=True)
        an.analyze_zoo(zoo)
    t = zoo.tasks
    for v in zoo.variants:
        print(f"landscapes ({v}) …", flush=True)
        an.interpolation_for(zoo, t[0], v)
        an.task_plane_for(zoo, t[0], t[1], v, n=11)
        an.random_plane_for(zoo, t[0], v, n=11)
    ex = Explorer(zoo)
    print("paper table …", flush=True)
    ex.paper_table()
    print("default λ sweeps …", flush=True)
    ex.sweeps(ex.default_spec())  # kept in ZOO/analysis/sweeps
    print("regime diagnostics …", flush=True)
    from sammerge.analytics.diagnostics import diagnose_zoo
    diagnose_zoo(zoo)
