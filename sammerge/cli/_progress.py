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
