"""The paper table as shown: display frame, LaTeX and the sentence that reads it."""
from __future__ import annotations

import json
import math
import os
import sys
import threading
from typing import Sequence

import pandas as pd

from sammerge.cache import cached
from sammerge.evaluation.protocol import adamerging_table, paper_table
from sammerge.explorer.style import variant_label
from sammerge.merging import get_method
from sammerge.merging.statistics import zoo_table_methods


ADAMERGING_GRANULARITIES = ("task", "layer")
ADAMERGING_SETTINGS: dict = {}  # learner settings of the page's rows (empty: the registry's defaults)
_ADA_LOCK = threading.Lock()
_ADA_ROWS: dict[str, pd.DataFrame] = {}


def adamerging_rows_cached(zoo) -> pd.DataFrame | None:
    """This server's AdaMerging rows of the paper table for ``zoo`` (None until computed)."""
    return _ADA_ROWS.get(str(zoo.path.absolute()))


def compute_adamerging_rows(zoo, progress=None) -> pd.DataFrame:
    """AdaMerging task- and layer-wise rows (learner defaults) for every variant, on the whole test split; kept."""
    key = str(zoo.path.absolute())
    with _ADA_LOCK:
        if key not in _ADA_ROWS:
            _ADA_ROWS[key] = adamerging_table(zoo, ADAMERGING_GRANULARITIES, settings=ADAMERGING_SETTINGS,
                                              progress=progress)
        return _ADA_ROWS[key]


def with_adamerging(frame: pd.DataFrame, ada: pd.DataFrame | None, variants: Sequence[str]) -> pd.DataFrame:
    """The paper table with the AdaMerging rows after each variant's methods (attrs of ``frame`` kept)."""
    if ada is None:
        return frame
    out = pd.concat([frame, ada], ignore_index=True)
    order = list(variants)
    out = out.sort_values("variant", kind="stable", key=lambda c: c.map(order.index)).reset_index(drop=True)
    out.attrs = {**frame.attrs, "learned": ada.attrs.get("learned", {}),
                 "protocol": f"{frame.attrs.get('protocol', '')}; {ada.attrs.get('protocol', '')}"}
    return out


def learned_json(frame: pd.DataFrame) -> str:
    """The learned AdaMerging specs of a table (row → spec) as JSON: the download of the learned coefficients."""
    return json.dumps(frame.attrs.get("learned", {}), indent=2) + "\n"


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


class PaperTableCache:
    """A zoo's paper table (``evaluation.protocol.paper_table``) as the app shows it: every table method of the zoo
    ($SAMMERGE_TABLE_METHODS, comma-separated, limits them), computed once and kept on disk with the zoo."""

    def __init__(self, zoo, lock) -> None:
        self.zoo, self.lock = zoo, lock
        self._table: pd.DataFrame | None = None

    def methods(self) -> list[str]:
        """The table's methods (``merging.statistics.zoo_table_methods``), or the ones $SAMMERGE_TABLE_METHODS names."""
        everything = zoo_table_methods(self.zoo)
        chosen = [m.strip() for m in os.environ.get("SAMMERGE_TABLE_METHODS", "").split(",") if m.strip()]
        unknown = [m for m in chosen if m not in everything]
        if unknown:
            print(f"sammerge: SAMMERGE_TABLE_METHODS names {', '.join(unknown)}, not among this zoo's table methods "
                  f"({', '.join(everything)}); ignored", file=sys.stderr)
        return [m for m in chosen if m in everything] or everything

    def _inputs(self) -> dict:
        return {"methods": {m: list(get_method(m).lambda_range or ()) for m in self.methods()},
                "variants": self.zoo.variants}

    def get_cached(self) -> pd.DataFrame | None:
        """The table if computed before — in this process or on disk (``ZOO/analysis/cache``) — else None."""
        with self.lock:
            if self._table is None:
                found = cached(self.zoo, "paper_table", self._inputs(), dict, cached_only=True)
                if found is not None:
                    self._table = frame_from_json(found)
            return self._table

    def get(self, progress=None) -> pd.DataFrame:
        """The table, computed (and written to disk) when not cached."""
        with self.lock:
            if self.get_cached() is None:
                found = cached(self.zoo, "paper_table", self._inputs(), lambda: frame_to_json(
                    paper_table(self.zoo, methods=self.methods(), progress=progress)), threads=None)
                self._table = frame_from_json(found)
            return self._table


def frame_to_json(frame: pd.DataFrame) -> dict:
    return {"columns": list(frame.columns), "rows": frame.astype(object).where(frame.notna(), None).values.tolist(),
            "attrs": dict(frame.attrs)}


def frame_from_json(data: dict) -> pd.DataFrame:
    frame = pd.DataFrame(data["rows"], columns=data["columns"]).fillna(value=float("nan")).infer_objects()
    frame.attrs.update(data.get("attrs", {}))
    return frame
