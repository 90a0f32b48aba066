"""Library-side facade of the explorer web app (no Streamlit here).

The pages of the app only arrange calls into this module: it builds merges from a :class:`MergeState`
(the complete state of the merge explorer's controls), evaluates them with the fast batched
:class:`~sammerge.evaluate.Evaluator`, and returns pandas tables, plotly figures, download payloads and
plain-language readings derived from the measured numbers.

A :class:`MergeState` round-trips through URL query parameters (:meth:`MergeState.to_query` /
:meth:`MergeState.from_query`) and through a :class:`~sammerge.config.MergeConfig` (:meth:`MergeState.to_config`
/ :meth:`MergeState.from_config`), so a link or a saved configuration reopens the same merge.
"""
from __future__ import annotations

import json
import math
import statistics
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from sammerge.merging.spec import MergeConfig, library_version, to_mergekit_yaml
from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator, TaskResult
from sammerge.merging import MergeMethod, ParamSpec, get_method, list_methods

__all__ = ["MergeState", "Explorer", "VARIANT_COLORS", "variant_label", "method_choices", "sam_vs_plain_sentence",
           "figure_html", "DEFAULT_METHOD", "DEFAULT_LAMBDA", "EXPLORER_SPLIT", "EXPLORER_N_PER_TASK"]

DEFAULT_METHOD = "task_arithmetic"
DEFAULT_LAMBDA = 0.3  # a usual starting point for task arithmetic over several tasks (Ilharco et al. use 0.3–0.4)
EXPLORER_SPLIT = "val"
EXPLORER_N_PER_TASK = 256
PRETRAINED_COLOR = "#9aa0a6"
VARIANT_COLORS = {"plain": "#1f77b4", "sam": "#d62728", "asam": "#9467bd"}
_EXTRA_COLORS = ["#2ca02c", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def variant_color(variant: str, variants: Sequence[str] = ()) -> str:
    if variant in VARIANT_COLORS:
        return VARIANT_COLORS[variant]
    others = [v for v in variants if v not in VARIANT_COLORS]
    return _EXTRA_COLORS[others.index(variant) % len(_EXTRA_COLORS)] if variant in others else _EXTRA_COLORS[0]


def variant_label(variant: str) -> str:
    return {"plain": "plain", "sam": "SAM", "asam": "ASAM"}.get(variant, variant)


def method_choices() -> list[str]:
    return [m.name for m in list_methods()]


def _round(v: float) -> float:
    return float(round(float(v), 6))


# ----------------------------------------------------------------------------------------------
# merge state
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MergeState:
    """Everything the merge explorer's controls hold.

    ``params``: the method's *global* parameters (complete, defaults filled in). ``included``: tasks merged,
    in zoo order. ``variants`` / ``weights`` / ``densities``: one entry per zoo task (kept for excluded tasks
    too, so re-including a task restores its settings). ``weights`` are the per-task coefficients λ_t (the
    method's per-model ``weights``), ``densities`` the optional per-task density overrides.
    """

    method: str
    params: Mapping[str, Any]
    tasks: tuple[str, ...]
    included: tuple[str, ...]
    variants: Mapping[str, str]
    weights: Mapping[str, float]
    densities: Mapping[str, float | None] = field(default_factory=dict)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def default(cls, zoo, method: str = DEFAULT_METHOD, variant: str | None = None) -> "MergeState":
        m = get_method(method)
        params = m.defaults()
        if "lambda" in params:
            params["lambda"] = DEFAULT_LAMBDA
        variants = zoo.variants
        v = variant or ("sam" if "sam" in variants else variants[-1])
        return cls(method=method, params=params, tasks=tuple(zoo.tasks), included=tuple(zoo.tasks),
                   variants={t: v for t in zoo.tasks}, weights={t: 1.0 for t in zoo.tasks},
                   densities={t: None for t in zoo.tasks})

    @property
    def spec(self) -> MergeMethod:
        return get_method(self.method)

    @property
    def has_weights(self) -> bool:
        return any(p.name == "weights" for p in self.spec.per_model_params)

    @property
    def has_densities(self) -> bool:
        return any(p.name == "densities" for p in self.spec.per_model_params)

    @property
    def has_lambda(self) -> bool:
        return "lambda" in self.params

    @property
    def lam(self) -> float | None:
        return self.params.get("lambda")

    def key(self) -> str:
        """A canonical string identifying the merge (used as a cache key)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params), "tasks": list(self.tasks),
                "included": list(self.included), "variants": dict(self.variants), "weights": dict(self.weights),
                "densities": dict(self.densities)}

    def evolve(self, **changes) -> "MergeState":
        return replace(self, **changes)

    def with_method(self, method: str) -> "MergeState":
        """Switch method: the new method's defaults, keeping λ when both methods have one."""
        if method == self.method:
            return self
        new = get_method(method).defaults()
        if "lambda" in new:
            new["lambda"] = self.params.get("lambda", DEFAULT_LAMBDA)
        return replace(self, method=method, params=new)

    def with_params(self, **params) -> "MergeState":
        return replace(self, params={**self.params, **params})

    def with_all_variants(self, variant: str) -> "MergeState":
        return replace(self, variants={t: variant for t in self.tasks})

    def uniform_variant(self) -> str | None:
        """The one variant used by every included task, or None for a mix."""
        used = {self.variants[t] for t in self.included}
        return used.pop() if len(used) == 1 else None

    def task_ids(self) -> list[str]:
        """Identifiers used for seeded randomness (DARE): ``task/variant`` like MergeConfig.task_ids."""
        return [f"{t}/{self.variants[t]}" for t in self.included]

    def method_kwargs(self, with_lambda: bool = True) -> dict[str, Any]:
        """Validated keyword arguments of the merge method for the included tasks."""
        if not self.included:
            raise ConfigError("no task selected: include at least one task to merge")
        kw = {k: v for k, v in self.params.items() if with_lambda or k != "lambda"}
        if self.has_weights:
            kw["weights"] = [float(self.weights[t]) for t in self.included]
        if self.has_densities and any(self.densities.get(t) is not None for t in self.included):
            kw["densities"] = [self.densities.get(t) for t in self.included]
        return self.spec.validate_params(kw, n_tasks=len(self.included)) if with_lambda else kw

    def describe(self) -> str:
        """One line naming the merge (shown above the results; changes with every control)."""
        parts = [self.spec.label]
        parts += [f"{'λ' if k == 'lambda' else k} = {_fmt(v)}" for k, v in self.params.items() if k != "normalize" or v]
        used = self.uniform_variant()
        ckpt = f"all {variant_label(used)}" if used else ", ".join(
            f"{t}: {variant_label(self.variants[t])}" for t in self.included)
        parts.append(f"{len(self.included)} task{'s' if len(self.included) != 1 else ''} ({ckpt})")
        if self.has_weights and any(self.weights[t] != 1.0 for t in self.included):
            parts.append("λ_t: " + ", ".join(f"{t} {_fmt(self.weights[t])}" for t in self.included))
        return " · ".join(parts)

    def validate(self) -> "MergeState":
        self.method_kwargs()
        return self

    # -- URL query parameters --------------------------------------------------------------------
    def to_query(self) -> dict[str, str]:
        """Compact query parameters: method, parameters, included tasks, variants and λ_t."""
        q = {"method": self.method}
        for name, value in self.params.items():
            q[f"p.{name}"] = _fmt(value)
        q["tasks"] = ",".join(self.included) if self.included else "-"
        q["variants"] = ",".join(f"{t}:{self.variants[t]}" for t in self.tasks)
        if self.has_weights:
            q["weights"] = ",".join(f"{t}:{_fmt(self.weights[t])}" for t in self.tasks)
        dens = [f"{t}:{_fmt(d)}" for t, d in self.densities.items() if d is not None]
        if dens:
            q["densities"] = ",".join(dens)
        return q

    @classmethod
    def from_query(cls, query: Mapping[str, str], zoo) -> tuple["MergeState", list[str]]:
        """Rebuild a state from query parameters; returns (state, warnings). Bad entries are ignored
        with a warning naming them, never an exception."""
        warnings: list[str] = []
        method = query.get("method", DEFAULT_METHOD)
        try:
            spec = get_method(method)
        except ConfigError as exc:
            warnings.append(f"link: {exc}; using {DEFAULT_METHOD}")
            method, spec = DEFAULT_METHOD, get_method(DEFAULT_METHOD)
        state = cls.default(zoo, method)
        params = dict(state.params)
        for p in spec.global_params:
            raw = query.get(f"p.{p.name}")
            if raw is None:
                continue
            try:
                params[p.name] = p.check_value(_parse(raw, p), p.name)
            except (ConfigError, ValueError) as exc:
                warnings.append(f"link: ignored parameter '{p.name}' ({exc})")
        included = list(state.included)
        if "tasks" in query:
            names = [] if query["tasks"] in ("", "-") else query["tasks"].split(",")
            unknown = [n for n in names if n not in zoo.tasks]
            if unknown:
                warnings.append(f"link: ignored unknown task(s) {', '.join(unknown)}")
            included = [t for t in zoo.tasks if t in names]
        variants, weights, densities = dict(state.variants), dict(state.weights), dict(state.densities)
        for t, v in _pairs(query.get("variants", ""), warnings, "variants"):
            if t in variants and v in zoo.variants:
                variants[t] = v
            else:
                warnings.append(f"link: ignored variant '{t}:{v}'")
        for name, what, values in (("weights", "weight", weights), ("densities", "density", densities)):
            pspec = next((p for p in spec.per_model_params if p.name == name), None)
            for t, v in _pairs(query.get(name, ""), warnings, name):
                try:
                    if t not in values or pspec is None:
                        raise ValueError("unknown task")
                    values[t] = pspec.check_value(float(v), f"{name}[{t}]")
                except (ConfigError, ValueError) as exc:
                    warnings.append(f"link: ignored {what} '{t}:{v}' ({exc})")
        new = cls(method=method, params=params, tasks=state.tasks, included=tuple(included), variants=variants,
                  weights=weights, densities=densities)
        try:
            spec.validate_params({k: v for k, v in params.items()})
        except ConfigError as exc:
            warnings.append(f"link: {exc}; using the method's defaults")
            new = replace(new, params=state.params)
        return new, warnings

    # -- MergeConfig -----------------------------------------------------------------------------
    def to_config(self, zoo, results: Mapping[str, Mapping[str, float]] | None = None,
                  notes: str | None = None) -> MergeConfig:
        """Our reproducible merge configuration, with provenance (zoo, files, sha256) and results."""
        kw = self.method_kwargs()
        global_names = {p.name for p in self.spec.global_params}
        m = zoo.manifest
        tasks = []
        for i, t in enumerate(self.included):
            record = m.checkpoint(t, self.variants[t])
            entry = {"task": t, "variant": self.variants[t], "checkpoint": str((zoo.path / record.file).absolute()),
                     "sha256": record.sha256}
            if self.has_weights:
                entry["weight"] = float(kw["weights"][i])
            if kw.get("densities") and kw["densities"][i] is not None:
                entry["density"] = float(kw["densities"][i])
            tasks.append(entry)
        data = {"method": self.method, "params": {k: v for k, v in kw.items() if k in global_names},
                "tasks": tasks, "base_model": str((zoo.path / m.pretrained.file).absolute()),
                "base_sha256": m.pretrained.sha256, "zoo": str(zoo.path.absolute()),
                "results": {k: dict(v) for k, v in results.items()} if results else None, "notes": notes}
        return MergeConfig.from_dict(data)

    @classmethod
    def from_config(cls, config: MergeConfig, zoo) -> tuple["MergeState", list[str]]:
        """Restore explorer state from a config; tasks absent from the config are excluded.

        Raises ConfigError when a task or variant of the config is not in this zoo; returns warnings
        for softer mismatches (checkpoint hash differs from the zoo's)."""
        warnings: list[str] = []
        state = cls.default(zoo, config.method)
        variants, weights, densities = dict(state.variants), dict(state.weights), dict(state.densities)
        included = []
        for entry in config.tasks:
            if entry.task not in zoo.tasks:
                raise ConfigError(f"imported config: task '{entry.task}' is not in this zoo "
                                  f"(zoo has: {', '.join(zoo.tasks)})")
            if entry.variant not in zoo.variants:
                raise ConfigError(f"imported config: variant '{entry.variant}' of task '{entry.task}' is not in "
                                  f"this zoo (zoo has: {', '.join(zoo.variants)})")
            record = zoo.manifest.checkpoint(entry.task, entry.variant)
            if entry.sha256 and entry.sha256 != record.sha256:
                warnings.append(f"task '{entry.task}' ({entry.variant}): the config's checkpoint sha256 "
                                f"{entry.sha256[:12]}… differs from this zoo's {record.sha256[:12]}…; "
                                "using this zoo's checkpoint")
            included.append(entry.task)
            variants[entry.task] = entry.variant
            weights[entry.task] = float(entry.weight)
            densities[entry.task] = entry.density
        params = get_method(config.method).validate_params(dict(config.params))
        params = {p.name: params[p.name] for p in get_method(config.method).global_params}
        new = cls(method=config.method, params=params, tasks=state.tasks,
                  included=tuple(t for t in zoo.tasks if t in included), variants=variants, weights=weights,
                  densities=densities)
        new.validate()
        return new, warnings


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _parse(raw: str, spec: ParamSpec) -> Any:
    if spec.kind == "bool":
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if spec.kind == "int":
        return int(float(raw))
    if spec.kind == "float":
        return float(raw)
    return raw


def _pairs(text: str, warnings: list[str], what: str):
    for item in filter(None, text.split(",")):
        if ":" not in item:
            warnings.append(f"link: ignored {what} entry {item!r} (expected task:value)")
            continue
        t, v = item.split(":", 1)
        yield t, v


# ----------------------------------------------------------------------------------------------
# the facade
# ----------------------------------------------------------------------------------------------

ProgressFn = Callable[[int, int], None]


class Explorer:
    """Merges and evaluations for one zoo, cached; thread-safe (one computation at a time)."""

    def __init__(self, zoo, n_per_task: int = EXPLORER_N_PER_TASK, split: str = EXPLORER_SPLIT, seed: int = 0,
                 cache_size: int = 64) -> None:
        self.zoo = zoo
        self.split = split
        self.n_per_task = n_per_task
        self.seed = seed
        self.evaluator = Evaluator.from_zoo(zoo, split=split, n_per_task=n_per_task, seed=seed)
        self._test_evaluator: Evaluator | None = None
        self._lock = threading.RLock()
        self._tvs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._merged: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._results: OrderedDict[str, dict[str, TaskResult]] = OrderedDict()
        self._sweeps: dict[str, Any] = {}
        self._refs: dict[str, Any] | None = None
        self._paper: dict[str, pd.DataFrame] = {}
        self.cache_size = cache_size

    # -- building blocks -------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return self.zoo.tasks

    @property
    def variants(self) -> list[str]:
        return self.zoo.variants

    def describe_evaluation(self) -> str:
        n = self.evaluator.images.shape[0] // max(1, len(self.evaluator.tasks))
        return f"{self.split} split, {n} images per task (fixed subset, seed {self.seed})"

    def task_vector(self, task: str, variant: str) -> dict[str, torch.Tensor]:
        key = (task, variant)
        if key not in self._tvs:
            self._tvs[key] = self.zoo.task_vector(task, variant)
        return self._tvs[key]

    def merge(self, state: MergeState) -> dict[str, torch.Tensor]:
        """The merged encoder for ``state`` (cached; do not modify the result)."""
        key = state.key()
        with self._lock:
            if key in self._merged:
                self._merged.move_to_end(key)
                return self._merged[key]
            kw = state.method_kwargs()
            tvs = [self.task_vector(t, state.variants[t]) for t in state.included]
            merged = state.spec(self.zoo.pretrained(), tvs, task_ids=state.task_ids(), validate=False, **kw)
            self._merged[key] = merged
            while len(self._merged) > self.cache_size:
                self._merged.popitem(last=False)
            return merged

    def evaluate(self, state: MergeState) -> dict[str, TaskResult]:
        return self.evaluate_many([state])[0]

    def evaluate_many(self, states: Sequence[MergeState]) -> list[dict[str, TaskResult]]:
        """Per-task results of several merges; the uncached ones in one batched pass."""
        with self._lock:
            keys = [s.key() for s in states]
            todo = [i for i, k in enumerate(keys) if k not in self._results]
            todo = [i for n, i in enumerate(todo) if keys[i] not in [keys[j] for j in todo[:n]]]
            if todo:
                merged = [self.merge(states[i]) for i in todo]
                results = self.evaluator.evaluate_many(merged) if len(merged) > 1 else [self.evaluator.evaluate(merged[0])]
                for i, res in zip(todo, results):
                    self._results[keys[i]] = res
                while len(self._results) > 4 * self.cache_size:
                    self._results.popitem(last=False)
            return [self._results[k] for k in keys]

    def references(self) -> dict[str, Any]:
        """Accuracy of the pretrained encoder and of every individual fine-tuned model, on the same images."""
        with self._lock:
            if self._refs is None:
                pre = self.evaluator.evaluate(self.zoo.pretrained())
                ft = {}
                for v in self.variants:
                    models = [self.zoo.finetuned(t, v) for t in self.tasks]
                    results = self.evaluator.evaluate_many(models)
                    ft[v] = {t: res[t] for t, res in zip(self.tasks, results)}
                self._refs = {"pretrained": pre, "finetuned": ft}
            return self._refs

    # -- the explorer's comparison ---------------------------------------------------------------
    def comparison_states(self, state: MergeState) -> dict[str, MergeState]:
        """The current merge plus the same merge with every task on each fine-tuning variant.

        Keys: ``"current"`` and one per variant (``"plain"``, ``"sam"``, …)."""
        out = {"current": state}
        for v in self.variants:
            out[v] = state.with_all_variants(v)
        return out

    def compare(self, state: MergeState) -> dict[str, dict[str, TaskResult]]:
        states = self.comparison_states(state)
        results = self.evaluate_many(list(states.values()))
        return dict(zip(states, results))

    def normalized(self, state: MergeState, result: Mapping[str, TaskResult]) -> dict[str, float]:
        """acc_merged(t) / acc_finetuned(t) with the fine-tuned model of the variant the merge uses for t."""
        ft = self.references()["finetuned"]
        out = {}
        for t in state.tasks:
            ref = ft[state.variants[t]][t].accuracy
            out[t] = result[t].accuracy / ref if ref > 0 else float("nan")
        return out

    def summary(self, state: MergeState, result: Mapping[str, TaskResult]) -> dict[str, float]:
        """Mean absolute and mean normalized accuracy over the included tasks."""
        norm = self.normalized(state, result)
        inc = list(state.included)
        return {"mean": statistics.mean(result[t].accuracy for t in inc),
                "normalized": statistics.mean(norm[t] for t in inc),
                "mean_loss": statistics.mean(result[t].loss for t in inc)}

    def accuracy_table(self, state: MergeState, compared: Mapping[str, Mapping[str, TaskResult]] | None = None
                       ) -> pd.DataFrame:
        """One row per zoo task: included?, variant, pretrained, each individual fine-tuned model, the
        current merge, the merge with all tasks on each variant, and normalized accuracy of the current merge."""
        compared = compared or self.compare(state)
        refs = self.references()
        cur = compared["current"]
        norm = self.normalized(state, cur)
        rows = []
        for t in self.tasks:
            row = {"task": t, "included": t in state.included, "variant": state.variants[t],
                   "λ_t": float(state.weights[t]) if state.has_weights else None,
                   "pretrained": refs["pretrained"][t].accuracy}
            for v in self.variants:
                row[f"fine-tuned ({variant_label(v)})"] = refs["finetuned"][v][t].accuracy
            row["merged"] = cur[t].accuracy
            for v in self.variants:
                row[f"merged, all {variant_label(v)}"] = compared[v][t].accuracy
            row["normalized"] = norm[t]
            row["loss"] = cur[t].loss
            rows.append(row)
        frame = pd.DataFrame(rows)
        if not state.has_weights:
            frame = frame.drop(columns=["λ_t"])
        return frame

    def summaries(self, state: MergeState, compared: Mapping[str, Mapping[str, TaskResult]] | None = None
                  ) -> dict[str, dict[str, float]]:
        compared = compared or self.compare(state)
        states = self.comparison_states(state)
        return {name: self.summary(states[name], res) for name, res in compared.items()}

    def results_record(self, state: MergeState, result: Mapping[str, TaskResult] | None = None
                       ) -> dict[str, dict[str, float]]:
        """Measured per-task results for a config's ``results`` field."""
        result = result or self.evaluate(state)
        norm = self.normalized(state, result)
        split = self.split
        out = {t: {f"{split}_accuracy": _round(result[t].accuracy), f"{split}_loss": _round(result[t].loss),
                   f"{split}_normalized_accuracy": _round(norm[t]), f"{split}_n": float(result[t].n)}
               for t in state.included}
        s = self.summary(state, result)
        out["_mean"] = {f"{split}_accuracy": _round(s["mean"]), f"{split}_normalized_accuracy": _round(s["normalized"])}
        return out

    # -- λ sweep -----------------------------------------------------------------------------------
    def sweep_key(self, state: MergeState) -> str:
        d = state.to_dict()
        d["params"].pop("lambda", None)
        return json.dumps(d, sort_keys=True)

    def cached_sweeps(self, state: MergeState) -> dict[str, Any] | None:
        """The λ sweeps for the comparison states if already computed, else None."""
        states = self.comparison_states(state)
        keys = {name: self.sweep_key(s) for name, s in states.items()}
        if all(k in self._sweeps for k in keys.values()):
            return {name: self._sweeps[k] for name, k in keys.items()}
        return None

    def sweeps(self, state: MergeState, progress: ProgressFn | None = None) -> dict[str, Any]:
        """Shared-λ sweeps on validation (grid 0..1 step 0.05) of the current merge and of the merge with
        every task on each variant (``sammerge.search.sweep_shared_lambda``)."""
        from sammerge.evaluation.search import sweep_shared_lambda

        states = self.comparison_states(state)
        out = {}
        with self._lock:
            for i, (name, s) in enumerate(states.items()):
                key = self.sweep_key(s)
                if key not in self._sweeps:
                    tvs = [self.task_vector(t, s.variants[t]) for t in s.included]
                    self._sweeps[key] = sweep_shared_lambda(
                        self.evaluator, s.method, self.zoo.pretrained(), tvs, s.method_kwargs(with_lambda=False),
                        task_ids=s.task_ids())
                out[name] = self._sweeps[key]
                if progress:
                    progress(i + 1, len(states))
        return out

    # -- figures ---------------------------------------------------------------------------------
    def bar_figure(self, table: pd.DataFrame, state: MergeState):
        import plotly.graph_objects as go

        fig = go.Figure()
        tasks = list(table["task"])
        labels = [t if inc else f"{t} (excluded)" for t, inc in zip(tasks, table["included"])]
        fig.add_bar(name="pretrained", x=labels, y=table["pretrained"], marker_color=PRETRAINED_COLOR)
        for v in self.variants:
            fig.add_bar(name=f"fine-tuned ({variant_label(v)})", x=labels, y=table[f"fine-tuned ({variant_label(v)})"],
                        marker_color=variant_color(v, self.variants), opacity=0.35)
        for v in self.variants:
            fig.add_bar(name=f"merged, all {variant_label(v)}", x=labels, y=table[f"merged, all {variant_label(v)}"],
                        marker_color=variant_color(v, self.variants))
        if state.uniform_variant() is None:
            fig.add_bar(name="merged (as chosen)", x=labels, y=table["merged"], marker_color="#2ca02c")
        fig.update_layout(barmode="group", yaxis=dict(title=f"accuracy ({self.split})", range=[0, 1.02],
                                                      tickformat=".0%"),
                          legend=dict(orientation="h", y=1.15), margin=dict(l=60, r=10, t=50, b=40), height=400)
        return fig

    def radar_figure(self, table: pd.DataFrame, state: MergeState):
        import plotly.graph_objects as go

        inc = table[table["included"]]
        theta = list(inc["task"]) + [inc["task"].iloc[0]]

        def closed(col):
            return list(inc[col]) + [inc[col].iloc[0]]

        fig = go.Figure()
        fig.add_trace(go.Scatterpolar(r=closed("pretrained"), theta=theta, name="pretrained",
                                      line=dict(color=PRETRAINED_COLOR, dash="dot")))
        for v in self.variants:
            c = variant_color(v, self.variants)
            fig.add_trace(go.Scatterpolar(r=closed(f"fine-tuned ({variant_label(v)})"), theta=theta,
                                          name=f"fine-tuned ({variant_label(v)})", line=dict(color=c, dash="dash", width=1)))
            fig.add_trace(go.Scatterpolar(r=closed(f"merged, all {variant_label(v)}"), theta=theta,
                                          name=f"merged, all {variant_label(v)}", line=dict(color=c, width=3)))
        if state.uniform_variant() is None:
            fig.add_trace(go.Scatterpolar(r=closed("merged"), theta=theta, name="merged (as chosen)",
                                          line=dict(color="#2ca02c", width=3)))
        fig.update_layout(polar=dict(radialaxis=dict(range=[0, 1], tickformat=".0%")), height=420,
                          legend=dict(orientation="h", y=-0.1), margin=dict(l=30, r=30, t=30, b=30))
        return fig

    def sweep_figure(self, sweeps: Mapping[str, Any], state: MergeState):
        import plotly.graph_objects as go

        fig = go.Figure()
        for name, sw in sweeps.items():
            if name == "current" and state.uniform_variant() is not None:
                continue  # identical to the all-<variant> curve
            color = "#2ca02c" if name == "current" else variant_color(name, self.variants)
            label = "as chosen" if name == "current" else f"all {variant_label(name)}"
            if sw.lambdas:
                fig.add_trace(go.Scatter(x=sw.lambdas, y=sw.val_mean, mode="lines+markers", name=label,
                                         line=dict(color=color)))
                fig.add_trace(go.Scatter(x=[sw.best_lambda], y=[sw.best_val_mean], mode="markers", showlegend=False,
                                         marker=dict(symbol="star", size=14, color=color),
                                         hovertemplate=f"best λ for {label}: %{{x}}<br>mean acc %{{y:.1%}}<extra></extra>"))
        if state.has_lambda:
            fig.add_vline(x=state.lam, line_dash="dash", line_color="#444",
                          annotation_text=f"current λ = {state.lam:g}", annotation_position="top")
        fig.update_layout(xaxis_title="shared λ", yaxis=dict(title=f"mean accuracy ({self.split})", tickformat=".0%"),
                          height=340, margin=dict(l=60, r=10, t=40, b=45), legend=dict(orientation="h", y=1.18))
        return fig

    # -- exports ---------------------------------------------------------------------------------
    def config(self, state: MergeState) -> MergeConfig:
        notes = (f"exported from the sammerge explorer; results measured on the {self.describe_evaluation()}")
        return state.to_config(self.zoo, results=self.results_record(state), notes=notes)

    def mergekit_yaml(self, state: MergeState) -> str:
        return to_mergekit_yaml(state.to_config(self.zoo))

    def weights_bytes(self, state: MergeState) -> bytes:
        """The merged encoder as safetensors bytes, with the config in the metadata."""
        from safetensors.torch import save

        merged = self.merge(state)
        cfg = state.to_config(self.zoo)
        tensors = {k: v.detach().contiguous() for k, v in merged.items()}
        return save(tensors, metadata={"format": "pt", "sammerge_config": cfg.to_json(),
                                       "sammerge_version": library_version()})

    def model_card(self, state: MergeState) -> str:
        result = self.evaluate(state)
        summ = self.summary(state, result)
        norm = self.normalized(state, result)
        spec = state.spec
        kw = state.method_kwargs()
        lines = [f"# Merged encoder — {spec.label}", "",
                 f"Made with sammerge {library_version()} from the zoo `{self.zoo.path}` "
                 f"(preset `{self.zoo.manifest.recipe.preset}`, seed {self.zoo.manifest.seed}).", "",
                 f"**Method**: `{spec.name}` — {spec.description}", ""]
        globals_ = {k: v for k, v in kw.items() if k not in ("weights", "densities")}
        if globals_:
            lines += ["**Parameters**: " + ", ".join(f"`{k}` = {_fmt(v)}" for k, v in globals_.items()), ""]
        lines += ["**Base model**: the pretrained encoder θ₀ "
                  f"(`{self.zoo.manifest.pretrained.file}`, sha256 `{self.zoo.manifest.pretrained.sha256[:16]}…`).", "",
                  "## Models merged", "", "| task | fine-tuning | coefficient λ_t | checkpoint | sha256 |",
                  "|---|---|---|---|---|"]
        for i, t in enumerate(state.included):
            rec = self.zoo.manifest.checkpoint(t, state.variants[t])
            coef = _fmt(kw["weights"][i]) if "weights" in kw and kw["weights"] else "1"
            lines.append(f"| {t} | {rec.method.get('label', state.variants[t])} | {coef} | `{rec.file}` | "
                         f"`{rec.sha256[:16]}…` |")
        lines += ["", f"## Accuracy ({self.describe_evaluation()})", "",
                  "| task | merged | individual fine-tuned | normalized |", "|---|---|---|---|"]
        ft = self.references()["finetuned"]
        for t in state.included:
            lines.append(f"| {t} | {result[t].accuracy:.1%} | {ft[state.variants[t]][t].accuracy:.1%} | {norm[t]:.1%} |")
        lines += [f"| **mean** | **{summ['mean']:.1%}** | | **{summ['normalized']:.1%}** |", "",
                  "Heads: each task keeps its frozen linear head from the zoo (`heads.safetensors`); this file holds "
                  "the encoder only. The exact recipe is in the accompanying `merge_config.json` and in the "
                  "safetensors metadata (`sammerge_config`).", ""]
        return "\n".join(lines)

    def results_csv(self, state: MergeState) -> str:
        return self.accuracy_table(state).to_csv(index=False)

    # -- paper table -----------------------------------------------------------------------------
    def paper_table_cached(self) -> pd.DataFrame | None:
        return self._paper.get("table")

    def paper_table(self, progress: ProgressFn | None = None) -> pd.DataFrame:
        from sammerge.evaluation.search import paper_table

        with self._lock:
            if "table" not in self._paper:
                self._paper["table"] = paper_table(self.zoo, progress=progress)
            return self._paper["table"]


# ----------------------------------------------------------------------------------------------
# readings derived from the numbers
# ----------------------------------------------------------------------------------------------

def sam_vs_plain_sentence(summaries: Mapping[str, Mapping[str, float]], what: str = "this merge") -> str:
    """One sentence comparing the all-SAM and all-plain versions, derived from the measured numbers."""
    if "sam" not in summaries or "plain" not in summaries:
        return ""
    s, p = summaries["sam"]["normalized"], summaries["plain"]["normalized"]
    sa, pa = summaries["sam"]["mean"], summaries["plain"]["mean"]
    diff = 100 * (s - p)
    if abs(diff) < 0.05:
        verdict = "SAM and plain fine-tuning merge equally well here"
    elif diff > 0:
        verdict = f"SAM fine-tuning merges better here, by {diff:.1f} points of normalized accuracy"
    else:
        verdict = f"SAM does **not** beat plain fine-tuning here: it is behind by {-diff:.1f} points of normalized accuracy"
    return (f"For {what}: {verdict} (all-SAM {s:.1%} normalized / {sa:.1%} absolute vs all-plain "
            f"{p:.1%} / {pa:.1%}).")


def figure_html(fig) -> str:
    """A self-contained HTML file of a plotly figure (plotly.js inlined: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


# ----------------------------------------------------------------------------------------------
# analytics pages: tables, figures and readings from sammerge.analytics.report
# ----------------------------------------------------------------------------------------------

SHARPNESS_MEASURES = {
    "top_eigenvalue": ("Top Hessian eigenvalue λ_max", "the largest curvature of the loss at the checkpoint"),
    "trace_mean": ("Hessian trace (Hutchinson)", "the total curvature summed over all directions"),
    "m_sharpness": ("m-sharpness (ρ-ball, worst case)", "how much the loss can rise within a small ball"),
    "m_sharpness_adaptive": ("adaptive m-sharpness", "the same, with a ball scaled to each weight's size"),
    "avg_sharpness": ("average sharpness (Gaussian)", "the loss increase under random small perturbations"),
}


def load_analysis_for(zoo) -> dict | None:
    """The zoo's precomputed analysis (``sammerge analyze``) if present and current, else None."""
    from sammerge.analytics.report import load_analysis
    return load_analysis(zoo)


def checkpoint_table(zoo, analysis: Mapping | None = None) -> pd.DataFrame:
    """The zoo's checkpoint table (task, fine-tuning, ρ, accuracies) plus sharpness when an analysis exists."""
    table = zoo.table()
    rho = {(r.task, r.variant): (r.method.get("rho") if r.method.get("sam") else None) for r in zoo.manifest.checkpoints}
    table.insert(3, "ρ", [f"{rho[(t, v)]:g}" if rho.get((t, v)) is not None else "—"  # text: "—" for plain
                          for t, v in zip(table["task"], table["variant"])])
    if analysis:
        sharp = pd.DataFrame(analysis["sharpness"])[["task", "variant", "top_eigenvalue", "trace_mean"]]
        sharp = sharp.rename(columns={"top_eigenvalue": "λ_max (Hessian)", "trace_mean": "Hessian trace"})
        table = table.merge(sharp, on=["task", "variant"], how="left")
    return table


def sharpness_frame(analysis: Mapping) -> pd.DataFrame:
    """Long table: one row per (task, variant) with every sharpness measure."""
    df = pd.DataFrame(analysis["sharpness"])
    keep = ["task", "variant"] + [c for c in ["top_eigenvalue", "trace_mean", "trace_se", "m_sharpness",
                                              "m_sharpness_adaptive", "avg_sharpness", "loss", "accuracy"]
                                  if c in df.columns]
    return df[keep]


def sharpness_wide(analysis: Mapping, measure: str) -> pd.DataFrame:
    df = sharpness_frame(analysis)
    wide = df.pivot(index="task", columns="variant", values=measure)
    wide = wide.reindex(list(dict.fromkeys(df["task"])))
    wide.columns = [variant_label(c) for c in wide.columns]
    return wide.reset_index()


def sharpness_figure(analysis: Mapping, measure: str, log: bool = True):
    import plotly.graph_objects as go

    df = sharpness_frame(analysis)
    variants = list(dict.fromkeys(df["variant"]))
    fig = go.Figure()
    for v in variants:
        sub = df[df["variant"] == v]
        fig.add_bar(name=variant_label(v), x=sub["task"], y=sub[measure], marker_color=variant_color(v, variants))
    label = SHARPNESS_MEASURES.get(measure, (measure, ""))[0]
    fig.update_layout(barmode="group", yaxis=dict(title=label + (" (log scale)" if log else ""),
                                                  type="log" if log else "linear"),
                      height=360, margin=dict(l=60, r=10, t=40, b=40), legend=dict(orientation="h", y=1.15))
    return fig


def sharpness_sentence(analysis: Mapping, measure: str) -> str:
    """Which variant is flatter, on how many tasks, from the measured numbers."""
    df = sharpness_frame(analysis)
    if not {"plain", "sam"} <= set(df["variant"]):
        return ""
    wide = df.pivot(index="task", columns="variant", values=measure).dropna()
    n = len(wide)
    flatter = int((wide["sam"] < wide["plain"]).sum())
    label = SHARPNESS_MEASURES.get(measure, (measure, ""))[0]
    ratio = float(statistics.median((wide["sam"] / wide["plain"]).tolist())) if n else float("nan")
    verdict = ("SAM checkpoints are flatter" if flatter > n / 2 else
               "SAM checkpoints are **not** flatter than plain ones" if flatter < n / 2 else "it is a draw")
    return (f"By {label[0].lower() + label[1:]}, {verdict} here: SAM is lower on {flatter} of {n} tasks "
            f"(median SAM/plain ratio {ratio:.2f}; mean plain {wide['plain'].mean():.3g}, SAM {wide['sam'].mean():.3g}).")


def curve_figure(curves: Mapping[str, Any], task: str, what: str = "loss"):
    """1-D interpolation curves θ0→θ_t, one per variant (keys: variant names), of ``what`` (loss/accuracy) on ``task``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for variant, curve in curves.items():
        values = getattr(curve, what)
        series = values.get(task)
        if series is None:  # a merged curve: mean over its tasks
            series = sum(values.values()) / len(values)
        fig.add_trace(go.Scatter(x=curve.alphas, y=series, mode="lines+markers",
                                 name=f"θ₀→θ_t ({variant_label(variant)})",
                                 line=dict(color=variant_color(variant, list(curves)))))
    fig.update_layout(xaxis_title="α (0 = θ₀, 1 = the fine-tuned model)", yaxis=dict(
        title=f"{what} on {task}", tickformat=".0%" if what == "accuracy" else None), height=330,
        margin=dict(l=70, r=10, t=40, b=60), legend=dict(orientation="h", y=1.15))
    return fig


def plane_values(plane, what: str) -> "Any":
    """A plane's grid [len(ys), len(xs)] of: 'loss i', 'loss j', 'mean loss', 'mean accuracy' (tasks in order)."""
    import numpy as np

    tasks = list(plane.loss)
    if what == "mean accuracy":
        z = np.mean([plane.accuracy[t] for t in tasks], axis=0)
    elif what == "mean loss":
        z = np.mean([plane.loss[t] for t in tasks], axis=0)
    else:
        z = plane.loss[what]
    return np.asarray(z).T  # rows: y, columns: x


def plane_figures(planes: Mapping[str, Any], what: str, surface: bool = False, log: bool = True):
    """One contour (or 3-D surface) per variant, on one shared colour scale, with θ0, θ_i, θ_j and the merge marked."""
    import numpy as np
    import plotly.graph_objects as go

    zs = {v: plane_values(p, what) for v, p in planes.items()}
    is_loss = what != "mean accuracy"
    if is_loss and log:
        zs = {v: np.log10(np.clip(z, 1e-4, None)) for v, z in zs.items()}
    zmin = float(min(np.nanmin(z) for z in zs.values()))
    zmax = float(max(np.nanmax(z) for z in zs.values()))
    title = ("log₁₀ " if is_loss and log else "") + what
    figs = {}
    for v, plane in planes.items():
        z = zs[v]
        colorscale = "Viridis" if is_loss else "Viridis_r"
        if surface:
            fig = go.Figure(go.Surface(x=plane.xs, y=plane.ys, z=z, cmin=zmin, cmax=zmax, colorscale=colorscale,
                                       colorbar=dict(title=title)))
            fig.update_layout(scene=dict(xaxis_title=plane.axes[0], yaxis_title=plane.axes[1], zaxis_title=title,
                                         zaxis=dict(range=[zmin, zmax])))
        else:
            fig = go.Figure(go.Contour(x=plane.xs, y=plane.ys, z=z, zmin=zmin, zmax=zmax, colorscale=colorscale,
                                       contours=dict(showlabels=False), colorbar=dict(title=title)))
            symbols = {"theta0": "circle", "origin": "circle", "task_i": "diamond", "task_j": "diamond",
                       "merge": "star"}
            for name, (x, y) in plane.markers.items():
                fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", text=[_marker_label(name, plane)],
                                         textposition="top center", showlegend=False,
                                         marker=dict(size=14 if name == "merge" else 11, color="white",
                                                     symbol=symbols.get(name, "x"), line=dict(color="black", width=1.5))))
            fig.update_layout(xaxis_title=plane.axes[0], yaxis_title=plane.axes[1])
        fig.update_layout(title=f"{variant_label(v)} fine-tuning", height=430, margin=dict(l=70, r=10, t=40, b=50))
        figs[v] = fig
    return figs


def _marker_label(name: str, plane) -> str:
    return {"theta0": "θ₀", "origin": "θ", "merge": "merge"}.get(name, name.replace("theta_", "θ_"))


def plane_sentence(planes: Mapping[str, Any]) -> str:
    """Compare the mean loss over the plane's [0,1]² square (where merges live) between variants."""
    import numpy as np

    vals = {}
    for v, p in planes.items():
        xs, ys = np.asarray(p.xs), np.asarray(p.ys)
        mx, my = (xs >= -1e-9) & (xs <= 1 + 1e-9), (ys >= -1e-9) & (ys <= 1 + 1e-9)
        z = plane_values(p, "mean loss")[np.ix_(my, mx)]
        vals[v] = float(np.mean(z))
    if not {"plain", "sam"} <= set(vals):
        return ""
    better = "SAM" if vals["sam"] < vals["plain"] else "plain"
    return (f"Mean loss of both tasks over the square 0 ≤ α_i, α_j ≤ 1 (where task-arithmetic merges lie): "
            f"plain {vals['plain']:.3f}, SAM {vals['sam']:.3f} — lower for **{better}** fine-tuning here.")


def matrix_figures(analysis: Mapping, kind: str):
    """Cosine-similarity or sign-conflict heatmaps per variant on one shared colour scale (diagonal masked)."""
    import numpy as np
    import plotly.graph_objects as go

    data = analysis["cosine" if kind == "cosine" else "sign_conflict"]
    mats = {}
    for v, d in data.items():
        m = np.array([[np.nan if x is None else x for x in row] for row in d["matrix"]], dtype=float)
        np.fill_diagonal(m, np.nan)
        mats[v] = (d["tasks"], m)
    off = np.concatenate([m[~np.isnan(m)] for _, m in mats.values()]) if mats else np.array([0.0])
    if kind == "cosine":
        r = float(max(1e-6, np.abs(off).max()))
        zmin, zmax, scale = -r, r, "RdBu_r"
    else:
        zmin, zmax, scale = float(min(off.min(), 0.5)), float(max(off.max(), 0.5)), "Oranges"
    figs = {}
    for v, (tasks, m) in mats.items():
        text = [["" if np.isnan(x) else (f"{x:.2f}" if kind == "cosine" else f"{x:.0%}") for x in row] for row in m]
        fig = go.Figure(go.Heatmap(z=m, x=tasks, y=tasks, zmin=zmin, zmax=zmax, colorscale=scale, text=text,
                                   texttemplate="%{text}", hoverongaps=False,
                                   colorbar=dict(title="cosine" if kind == "cosine" else "conflict")))
        fig.update_layout(title=f"{variant_label(v)} fine-tuning", height=420, margin=dict(l=110, r=10, t=40, b=90),
                          yaxis=dict(autorange="reversed"))
        figs[v] = fig
    return figs


def matrix_sentence(analysis: Mapping, kind: str) -> str:
    import numpy as np

    data = analysis["cosine" if kind == "cosine" else "sign_conflict"]
    means = {}
    for v, d in data.items():
        m = np.array([[np.nan if x is None else x for x in row] for row in d["matrix"]], dtype=float)
        np.fill_diagonal(m, np.nan)
        means[v] = float(np.nanmean(np.abs(m) if kind == "cosine" else m))
    if not {"plain", "sam"} <= set(means):
        return ""
    p, s = means["plain"], means["sam"]
    if kind == "cosine":
        lower = "SAM" if s < p else "plain"
        return (f"Mean |cosine| between different tasks' vectors: plain {p:.3f}, SAM {s:.3f} — closer to orthogonal "
                f"(less overlap) for **{lower}** fine-tuning.")
    lower = "SAM" if s < p else "plain"
    return (f"Mean share of weights where two task vectors disagree in sign (among weights both change): "
            f"plain {p:.1%}, SAM {s:.1%} — fewer conflicts for **{lower}** fine-tuning.")


def disentanglement_figures(results: Mapping[str, Any]):
    """ξ(α_1, α_2) heatmaps per variant on one shared colour scale (0 = perfectly disentangled)."""
    import numpy as np
    import plotly.graph_objects as go

    zmax = float(max(np.nanmax(np.asarray(r.xi)) for r in results.values())) if results else 1.0
    figs = {}
    for v, r in results.items():
        t1, t2 = r.tasks
        fig = go.Figure(go.Heatmap(x=r.alphas1, y=r.alphas2, z=np.asarray(r.xi).T, zmin=0, zmax=max(zmax, 1e-6),
                                   colorscale="Magma_r", colorbar=dict(title="ξ")))
        fig.update_layout(title=f"{variant_label(v)} fine-tuning — mean ξ = {r.mean:.3f}", height=420,
                          xaxis_title=f"α for {t1}", yaxis_title=f"α for {t2}", margin=dict(l=70, r=10, t=40, b=50))
        figs[v] = fig
    return figs


def disentanglement_sentence(results: Mapping[str, Any]) -> str:
    if not {"plain", "sam"} <= set(results):
        return ""
    p, s = results["plain"].mean, results["sam"].mean
    better = "SAM" if s < p else "plain"
    return (f"Mean disentanglement error ξ over the grid: plain {p:.3f}, SAM {s:.3f} — the merged model's predictions "
            f"stay closer to each task's own fine-tuned model for **{better}** fine-tuning.")


def disentanglement_from_analysis(analysis: Mapping, pair: Sequence[str]) -> dict[str, Any]:
    import numpy as np

    from sammerge.analytics.interference import Disentanglement

    out = {}
    for v, results in analysis.get("disentanglement", {}).items():
        for d in results:
            if list(d["tasks"]) == list(pair):
                out[v] = Disentanglement(np.asarray(d["alphas1"]), np.asarray(d["alphas2"]), np.asarray(d["xi"]),
                                         tuple(d["tasks"]))
    return out


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


def png_available() -> bool:
    """Server-side PNG export needs the optional ``kaleido`` (≥ 1, drives the system Chromium; works offline)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


def figure_png(fig, scale: float = 2.0) -> bytes:
    """A PNG of a plotly figure (requires kaleido; see :func:`png_available`)."""
    return fig.to_image(format="png", scale=scale)


def layer_norm_figure(analysis: Mapping, task: str | None = None):
    """Per-layer task-vector RMS (mean over tasks, or one task), plain vs SAM, layers in network order."""
    import plotly.graph_objects as go

    df = pd.DataFrame(analysis.get("layer_norms") or [])
    if df.empty:
        return None
    if task is not None:
        df = df[df["task"] == task]
    order = list(dict.fromkeys(df["layer"]))
    fig = go.Figure()
    variants = list(dict.fromkeys(df["variant"]))
    for v in variants:
        sub = df[df["variant"] == v].groupby("layer", sort=False)["rms"].mean().reindex(order)
        fig.add_trace(go.Scatter(x=order, y=sub.values, mode="lines+markers", name=variant_label(v),
                                 line=dict(color=variant_color(v, variants))))
    fig.update_layout(yaxis=dict(title="RMS of τ entries", type="log"), xaxis=dict(tickangle=-45),
                      height=380, margin=dict(l=70, r=10, t=30, b=120), legend=dict(orientation="h", y=1.12))
    return fig


def layer_norm_sentence(analysis: Mapping) -> str:
    df = pd.DataFrame(analysis.get("layer_norms") or [])
    if df.empty or not {"plain", "sam"} <= set(df["variant"]):
        return ""
    per = df.groupby(["layer", "variant"])["rms"].mean().unstack("variant")
    ratio = float(statistics.median((per["sam"] / per["plain"]).dropna().tolist()))
    bigger = int((per["sam"] > per["plain"]).sum())
    return (f"Median SAM/plain ratio of per-layer RMS change: {ratio:.2f}; SAM moved {bigger} of {len(per)} layers "
            f"further than plain fine-tuning did.")
