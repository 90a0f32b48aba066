"""A tqdm bar driven by the library's ``progress(done, total, stage)`` callbacks (:mod:`sammerge.progress`)."""
from __future__ import annotations

import contextlib
from typing import Iterator

from sammerge.progress import Progress


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """Yield a callback that shows stage and step count; a no-op when ``enabled`` is false."""
    if not enabled:
        yield lambda done, total, stage="": None
        return
    from tqdm import tqdm

    bar = tqdm(total=1, unit="step", dynamic_ncols=True)

    def progress(done: int, total: int, stage: str = "") -> None:
        bar.total = total
        bar.set_description(stage[:48])
        bar.n = done
        bar.refresh()

    try:
        yield progress
    finally:
        bar.close()


@contextlib.contextmanager
def delayed_progress_bar(enabled: bool = True, after_s: float = 2.0) -> Iterator[Progress]:
    """Like :func:`progress_bar`, but the bar appears only once the work has taken ``after_s`` seconds (quick calls
    print nothing)."""
    import time

    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        bar: list[Progress] = []

        def progress(done: int, total: int, stage: str = "") -> None:
            if not enabled:
                return
            if not bar and time.perf_counter() - start >= after_s:
                bar.append(stack.enter_context(progress_bar(True)))
            if bar:
                bar[0](done, total, stage)

        yield progress
