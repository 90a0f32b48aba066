"""The paper table as shown: display frame, LaTeX and the sentence that reads it."""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from sammerge.explorer.style import variant_label


def paper_table_display(frame: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """The paper table with readable columns (variant label, method, λ, per-task, mean, normalized)."""
    out = frame.copy()
    out["variant"] = out["variant"].map(variant_label)
    cols = ["variant", "method", "best λ"] + [t for t in tasks if t in out.columns] + ["mean", "normalized"]
    return out[cols]


def paper_latex(frame: pd.DataFrame, tasks: Sequence[str]) -> str:
    shown = paper_table_display(frame, tasks).copy()
    for c in list(tasks) + ["mean", "normalized"]:
        shown[c] = (100 * shown[c]).map(lambda x: f"{x:.1f}")
    shown["best λ"] = shown["best λ"].map(lambda x: "" if x is None or (isinstance(x, float) and math.isnan(x))
                                         else f"{x:g}")
    caption = (f"Test accuracy (\\%) per task, mean absolute and mean normalized accuracy; each method at its best "
               f"shared $\\lambda$ on validation ({frame.attrs.get('protocol', '')}).")
    return shown.to_latex(index=False, escape=True, caption=caption, label="tab:sam-merging",
                          column_format="ll" + "r" * (len(shown.columns) - 2))


def paper_sentence(frame: pd.DataFrame) -> str:
    """How often SAM beats plain across merge methods (normalized accuracy), from the table."""
    rows = frame[frame["method_id"].notna()]
    if not {"plain", "sam"} <= set(rows["variant"]):
        return ""
    piv = rows.pivot(index="method", columns="variant", values="normalized")
    diff = 100 * (piv["sam"] - piv["plain"])
    wins = int((diff > 0).sum())
    n = len(diff)
    best = diff.idxmax()
    worst = diff.idxmin()
    verdict = ("SAM fine-tuning keeps more of its own accuracy when merged for most methods" if wins > n / 2 else
               "SAM fine-tuning does **not** keep more of its own accuracy when merged for most methods"
               if wins < n / 2 else "SAM and plain fine-tuning split the methods evenly on normalized accuracy")
    absolute = rows.pivot(index="method", columns="variant", values="mean")
    abs_diff = 100 * (absolute["sam"] - absolute["plain"])
    abs_wins = int((abs_diff > 0).sum())
    return (f"{verdict} on this zoo: SAM's normalized test accuracy is higher for {wins} of {n} methods "
            f"(mean difference {diff.mean():+.1f} points; largest {diff[best]:+.1f} for {best}, smallest "
            f"{diff[worst]:+.1f} for {worst}). In absolute test accuracy the SAM merge is "
            f"{'higher' if abs_wins > n / 2 else '**not** higher'} for most methods: {abs_wins} of {n} "
            f"(mean difference {abs_diff.mean():+.1f} points) — normalized accuracy divides by each variant's own "
            f"fine-tuned accuracy, so weaker individual models can look better normalized.")
