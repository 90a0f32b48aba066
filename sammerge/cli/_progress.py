"""A tqdm bar driven by the library's ``progress(stage, done, total)`` callbacks."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

ProgressFn = Callable[[str, int, int], None]


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[ProgressFn]:
    """Yield a callback that shows stage and step count; a no-op when ``enabled`` is false."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    from tqdm import tqdm

    bar = tqdm(total=1, unit="step", dynamic_ncols=True)

    def progress(stage: str, done: int, total: int) -> None:
        bar.total = total
        bar.set_description(stage[:48])
        bar.n = done
        bar.refresh()

    try:
        yield progress
    finally:
        bar.close()
