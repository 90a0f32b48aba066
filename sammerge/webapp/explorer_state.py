"""The merge explorer's controls ⇄ :class:`MergeSpec` codec, on any mutable mapping (Streamlit's session state in
the app, a dict in tests) — no Streamlit here.

Every control has one key (:func:`k_param`, :func:`k_inc`, …). :func:`push_state` writes a spec into those keys
(before the widgets are drawn), :func:`controls_spec` reads the spec back (once per run: the one validation of a
move), :func:`import_config` turns pasted or uploaded text into a spec over the zoo.
"""
from __future__ import annotations

from typing import Any, MutableMapping

from sammerge.errors import SammergeError
from sammerge.merging import DENSITIES, WEIGHTS, MergeSpec
from sammerge.merging.mergekit import config_from_text
from sammerge.merging.spec import fit_task_count

__all__ = ["W", "k_param", "k_inc", "k_var", "k_w", "k_d", "k_on", "optional_per_task", "per_task_start",
           "clamp_for", "coerce", "push_state", "controls_spec", "import_config"]

W = "ex_"  # prefix of every widget key of the explorer page


def k_param(method: str, name: str) -> str:
    return f"{W}p_{method}_{name}"


def k_inc(task: str) -> str:
    return f"{W}inc_{task}"


def k_var(task: str) -> str:
    return f"{W}var_{task}"


def k_w(task: str) -> str:
    return f"{W}w_{task}"


def k_d(task: str, name: str = DENSITIES) -> str:
    """A per-task parameter's control (``densities``: the historical key ``ex_d_<task>``)."""
    return f"{W}d_{task}" if name == DENSITIES else f"{W}pt_{name}_{task}"


def k_on(name: str) -> str:
    """The toggle that turns a per-task parameter on (off: every task uses the global value)."""
    return f"{W}dens_on" if name == DENSITIES else f"{W}pt_on_{name}"


def optional_per_task(method) -> list:
    """Per-task parameters with an optional control (all but the λ_t sliders, which are always shown)."""
    return [p for p in method.per_model_params if p.name != WEIGHTS]


def per_task_start(pspec, params: dict) -> float:
    """Where a per-task control starts: its global namesake (``densities`` → ``density``), else its entry default,
    else the low end of its range."""
    namesake = next((params[n] for n in (pspec.name[:-3] + "y", pspec.name[:-1]) if n in params), None)
    for value in (namesake, pspec.entry_default, pspec.slider_range[0], 0.0):
        if value is not None:
            return float(value)


def clamp_for(pspec, value, clamped: list[str] | None = None, what: str = ""):
    """``value`` limited to the control's range; a note goes to ``clamped`` when it had to move."""
    lo, hi = pspec.slider_range
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        limited = value if lo is None else max(lo, value)
        limited = limited if hi is None else min(hi, limited)
        if clamped is not None and limited != value:
            clamped.append(f"{what or pspec.label} = {value:g} is outside the control's range "
                           f"{'-∞' if lo is None else f'{lo:g}'} … {'∞' if hi is None else f'{hi:g}'}; set to {limited:g}")
        value = limited
    return value


def coerce(pspec, value):
    """A control's value as the spec takes it (what the widget returns): ints, floats rounded to 1e-6."""
    if pspec.kind in ("bool", "choice"):
        return value
    if pspec.kind == "int":
        return int(value)
    return round(float(value), 6)


def push_state(ss: MutableMapping[str, Any], state: MergeSpec, zoo, only_missing: bool = False) -> list[str]:
    """Write a spec into the controls' keys of ``ss``. Tasks the spec leaves out are unticked and keep their other
    settings. ``only_missing``: fill only keys ``ss`` lacks. Returns a note for every value that had to be moved
    into its control's range (the page shows them: what is on screen is what runs)."""
    clamped: list[str] = []
    method = state.spec
    target = {f"{W}method": state.method}
    for p in method.global_params:
        target[k_param(state.method, p.name)] = clamp_for(p, state.params[p.name], clamped, p.name)
    wspec = next((p for p in method.per_model_params if p.name == WEIGHTS), None)
    optional = optional_per_task(method)
    entries = {t.task: t for t in state.tasks}
    fallback = state.uniform_variant() or zoo.variants[0]
    for t in zoo.tasks:
        e = entries.get(t)
        target[k_inc(t)] = e is not None
        if e is None:
            ss.setdefault(k_var(t), fallback)
            if wspec is not None:
                ss.setdefault(k_w(t), 1.0)
            continue
        target[k_var(t)] = e.variant
        if wspec is not None:
            target[k_w(t)] = float(clamp_for(wspec, e.weight, clamped, f"λ_t for {t}"))
        for pspec in optional:
            value = e.value(pspec.name)
            if value is None and only_missing:
                continue  # a per-task control not in use starts at its global namesake when turned on
            target[k_d(t, pspec.name)] = float(clamp_for(
                pspec, value if value is not None else per_task_start(pspec, state.params), clamped,
                f"{pspec.label} for {t}"))
    for pspec in optional:
        target[k_on(pspec.name)] = any(e.value(pspec.name) is not None for e in state.tasks)
    for key, value in target.items():
        if not only_missing or key not in ss:
            ss[key] = value
    return clamped


def controls_spec(ss: MutableMapping[str, Any], state: MergeSpec, zoo) -> MergeSpec | None:
    """The spec the controls in ``ss`` show (the last spec ``state`` fills what they do not hold). A new method
    starts from ``state``'s shared parameters (and a task set it can merge: its controls are updated). None when no
    task is ticked; a SammergeError when the values make no valid merge. Validates once: one MergeSpec."""
    method = ss.get(f"{W}method", state.method)
    if method != state.method:
        ticked = [t for t in zoo.tasks if ss.get(k_inc(t))]
        state = state.with_method(method)
        for p in state.spec.global_params:
            ss[k_param(method, p.name)] = clamp_for(p, state.params[p.name])
        if ticked and not state.spec.accepts_tasks(len(ticked)):  # e.g. slerp merges two: tick a fitting set
            fitted = fit_task_count(state.spec, ticked, list(zoo.tasks))
            for t in zoo.tasks:
                ss[k_inc(t)] = t in fitted
    spec = state.spec
    params = {p.name: coerce(p, ss[k_param(method, p.name)]) if k_param(method, p.name) in ss else state.params[p.name]
              for p in spec.global_params}
    names = {p.name for p in spec.per_model_params}
    optional = [p for p in optional_per_task(spec) if ss.get(k_on(p.name))]
    for t in zoo.tasks:  # initial values of controls the user has not touched yet
        ss.setdefault(k_var(t), zoo.variants[0])
        if WEIGHTS in names:
            ss.setdefault(k_w(t), 1.0)
        for pspec in optional:  # a per-task parameter starts at its global namesake
            ss.setdefault(k_d(t, pspec.name), per_task_start(pspec, params))
    included = [t for t in zoo.tasks if ss.get(k_inc(t))]
    if not included:
        return None
    variants = {t: ss[k_var(t)] for t in included}
    weights = {t: round(float(ss[k_w(t)]), 6) for t in included} if WEIGHTS in names else {}
    per_task = {p.name: {t: coerce(p, ss[k_d(t, p.name)]) for t in included} for p in optional}
    # per-layer coefficients (from a link or the Layer coefficients page) have no controls: they are kept
    layer_weights = ({t: w for t, w in state.layer_weights.items() if t in included}
                     if spec.supports_layer_weights else None)
    return MergeSpec.for_zoo(zoo, method, params, variants, weights, tasks=included,
                             layer_weights=layer_weights or None, per_task=per_task)


def import_config(text: str, zoo) -> tuple[MergeSpec | None, list[str], str | None]:
    """(spec over ``zoo``, warnings, None) from pasted or uploaded text — our JSON/YAML or a mergekit YAML whose
    files are named like the zoo's — or (None, [], the problem) when it is not a usable configuration."""
    if not text.strip():
        return None, [], "paste a configuration or choose a file first"
    try:
        state, warnings = config_from_text(text).rebased(zoo)
    except SammergeError as exc:
        return None, [], str(exc)
    return state, warnings, None
