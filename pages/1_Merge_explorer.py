"""Merge explorer: choose a merge, see per-task accuracy for SAM vs plain fine-tuning, export it."""
from __future__ import annotations

import json
from urllib.parse import urlencode

import streamlit as st

from sammerge.errors import ConfigError, SammergeError
from sammerge.explorer.exports import figure_html, figure_png, model_card, png_available, weights_bytes
from sammerge.explorer.figures import bar_figure, radar_figure, sam_vs_plain_sentence, sweep_figure
from sammerge.explorer.service import EXPLORER_N_PER_TASK, method_choices
from sammerge.explorer.style import describe, variant_label
from sammerge.merging import (DENSITIES, LAMBDA, WEIGHTS, MergeSpec, from_mergekit_yaml, get_method,
                              is_mergekit_config, to_mergekit_yaml)
from sammerge.merging.mergekit import no_equivalent_message
from sammerge.merging.spec import fit_task_count
from sammerge.progress import reporting
from sammerge.webapp import ui

came_from = ui.page_setup("Merge explorer", "🎛️")
st.title("Merge explorer")
st.markdown(
    "Pick a **merge method** and its settings, choose which tasks to merge and which fine-tuned checkpoint each "
    "uses (**plain**, **SAM**, … — the zoo's variants), and set the coefficients. Every change re-merges the encoder "
    "and measures it on every task at once. The same merge is always computed with every task on each variant "
    "(*all-plain*, *all-SAM*, …), so the difference the optimizer makes is visible at a glance.")

zoo = ui.zoo_sidebar()
ss = st.session_state

W = "ex_"  # prefix of every widget key on this page


def on_budget() -> None:  # plain copies: Streamlit forgets widget values when the user visits another page
    ss[f"{W}budget_v"], ss[f"{W}exact_v"] = int(ss[f"{W}budget"]), bool(ss[f"{W}exact"])


# the image budget and the exact override live outside the fragment: a new budget is another Explorer (a full rerun)
ss[f"{W}budget"] = ss.setdefault(f"{W}budget_v", EXPLORER_N_PER_TASK)
ss[f"{W}exact"] = ss.setdefault(f"{W}exact_v", False)
with st.sidebar:
    st.header("Evaluation")
    st.number_input("Images per task", min_value=1, max_value=100_000, step=16, key=f"{W}budget", on_change=on_budget,
                    help="The fixed validation subset every merge is scored on (seed 0; a task with fewer "
                         "images uses all of them). Fewer images: faster, less precise.")
    st.toggle("Always evaluate exactly", key=f"{W}exact", on_change=on_budget,
              help="Off: when the encoder is too slow to evaluate the whole budget at once (e.g. a ViT-B/32 on a "
                   "CPU), a merge is first shown as an estimate from its first images per task, with its 95 % "
                   "confidence interval, and refined to the exact number in the background.")
ex = ui.get_explorer(zoo, n_per_task=ss[f"{W}budget_v"])
ALLOW_ESTIMATE = not ss[f"{W}exact_v"]


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


def optional_per_task(spec) -> list:
    """Per-task parameters with an optional control (all but the λ_t sliders, which are always shown)."""
    return [p for p in spec.per_model_params if p.name != WEIGHTS]


def per_task_start(pspec, params: dict) -> float:
    """Where a per-task control starts: its global namesake (``densities`` → ``density``), else its entry default,
    else the low end of its range."""
    namesake = next((params[n] for n in (pspec.name[:-3] + "y", pspec.name[:-1]) if n in params), None)
    for value in (namesake, pspec.entry_default, pspec.slider_range[0], 0.0):
        if value is not None:
            return float(value)


def _clamp_for(spec, value, clamped: list[str] | None = None, what: str = ""):
    """``value`` limited to the control's range; a note goes to ``clamped`` when it had to move."""
    lo, hi = spec.slider_range
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        limited = value
        if lo is not None:
            limited = max(lo, limited)
        if hi is not None:
            limited = min(hi, limited)
        if clamped is not None and limited != value:
            clamped.append(f"{what or spec.label} = {value:g} is outside the control's range "
                           f"{'-∞' if lo is None else f'{lo:g}'} … {'∞' if hi is None else f'{hi:g}'}; set to {limited:g}")
        value = limited
    return value


def push_state(state: MergeSpec, only_missing: bool = False) -> list[str]:
    """Write a spec into the widgets' session-state keys (only before the widgets are created).

    Tasks the spec leaves out are unticked and keep their other settings. ``only_missing``: fill only keys
    Streamlit dropped (it forgets widget values when the user visits another page). Returns a note for every
    value that had to be moved into its control's range (the page shows them: what is on screen is what runs).
    """
    clamped: list[str] = []
    target = {f"{W}method": state.method}
    spec = state.spec
    for p in spec.global_params:
        target[k_param(state.method, p.name)] = _clamp_for(p, state.params[p.name], clamped, p.name)
    wspec = next((p for p in spec.per_model_params if p.name == WEIGHTS), None)
    optional = optional_per_task(spec)
    entries = {t.task: t for t in state.tasks}
    fallback = state.uniform_variant() or zoo.variants[0]
    for t in zoo.tasks:
        e = entries.get(t)
        target[k_inc(t)] = e is not None
        if e is not None:
            target[k_var(t)] = e.variant
            if wspec is not None:
                target[k_w(t)] = float(_clamp_for(wspec, e.weight, clamped, f"λ_t for {t}"))
            for pspec in optional:
                value = e.value(pspec.name)
                target[k_d(t, pspec.name)] = float(_clamp_for(
                    pspec, value if value is not None else per_task_start(pspec, state.params), clamped,
                    f"{pspec.label} for {t}"))
        else:
            ss.setdefault(k_var(t), fallback)
            if wspec is not None:
                ss.setdefault(k_w(t), 1.0)
    for pspec in optional:
        target[k_on(pspec.name)] = any(e.value(pspec.name) is not None for e in state.tasks)
    for key, value in target.items():
        if not only_missing or key not in ss:
            ss[key] = value
    return clamped


def initial_state() -> MergeSpec:
    query = dict(st.query_params)
    if "method" in query:
        state, warnings = MergeSpec.from_query(query, zoo)
        for w in warnings:
            st.warning(w, icon=":material/link:")
        return state
    return MergeSpec.default_for_zoo(zoo)


# -- state bootstrapping: a new zoo, a link, or a pending change from a button --------------------
if ss.get(f"{W}zoo") != str(zoo.path):
    ss[f"{W}zoo"] = str(zoo.path)
    ss[f"{W}state"] = initial_state()
    for note in push_state(ss[f"{W}state"]):
        st.warning(f"link: {note}", icon=":material/link:")
elif came_from != "Merge explorer":
    push_state(ss[f"{W}state"])  # back from another page: Streamlit has reset the widgets
ui.seed_widget(f"{W}view", "Per-task bars")


def request(state: MergeSpec, message: str | None = None) -> None:
    """Callback helper: apply ``state`` to the controls at the start of the next run."""
    ss[f"{W}pending"] = state
    if message:
        ss[f"{W}flash"] = message


def on_all_variant(variant: str) -> None:
    for t in zoo.tasks:  # every task's checkpoint radio, merged or not
        ss[k_var(t)] = variant
    request(ss[f"{W}state"].with_variants(variant, zoo))


def on_drop_layers() -> None:
    state = ss[f"{W}state"]
    ss[f"{W}state"] = state.evolve(tasks=[t.model_copy(update={"layer_weights": None}) for t in state.tasks])


def on_best_lambda() -> None:
    ss[f"{W}want_best"] = True


def on_import() -> None:
    text = ss.get(f"{W}import_text") or ""
    upload = ss.get(f"{W}import_file")
    if upload is not None:
        text = upload.getvalue().decode("utf-8", errors="replace")
    if not text.strip():
        ss[f"{W}import_error"] = "paste a configuration or choose a file first"
        return
    try:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            import yaml
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"not valid JSON or YAML ({str(exc).splitlines()[0]})") from None
        cfg = from_mergekit_yaml(data) if is_mergekit_config(data) else MergeSpec.from_dict(data)
        state, warnings = cfg.rebased(zoo)
    except SammergeError as exc:
        ss[f"{W}import_error"] = str(exc)
        return
    ss.pop(f"{W}import_error", None)
    request(state, "Configuration imported: the controls now show it." + "".join(f" ⚠️ {w}" for w in warnings))


def coerce(spec, value):
    """A control's value as the spec takes it (what the widget returns): ints, floats rounded to 1e-6."""
    if spec.kind in ("bool", "choice"):
        return value
    if spec.kind == "int":
        return int(value)
    return round(float(value), 6)


def controls_spec(state: MergeSpec) -> MergeSpec | None:
    """The spec the controls show, read from their session-state keys (Streamlit has already stored a moved
    control's new value when the fragment reruns), so results can be drawn before the controls.
    None when no task is ticked; a SammergeError when the values make no valid merge."""
    method = ss.get(f"{W}method", state.method)
    if method != state.method:  # a new method: its parameters start from the old spec's shared ones
        ticked = [t for t in zoo.tasks if ss.get(k_inc(t))]
        state = state.with_method(method)
        for p in state.spec.global_params:
            ss[k_param(method, p.name)] = _clamp_for(p, state.params[p.name])
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
        ui.seed_widget(k_var(t), zoo.variants[0])
        if WEIGHTS in names:
            ui.seed_widget(k_w(t), 1.0)
        for pspec in optional:  # a per-task parameter starts at its global namesake
            ui.seed_widget(k_d(t, pspec.name), per_task_start(pspec, params))
    included = [t for t in zoo.tasks if ss.get(k_inc(t))]
    if not included:
        return None
    variants = {t: ss[k_var(t)] for t in included}
    weights = {t: round(float(ss[k_w(t)]), 6) for t in included} if WEIGHTS in names else {}
    per_task = {p.name: {t: coerce(p, ss[k_d(t, p.name)]) for t in included} for p in optional}
    # per-layer coefficients (from a link or the Layer coefficients page) have no controls here: they are kept
    layer_weights = ({t: w for t, w in state.layer_weights.items() if t in included}
                     if spec.supports_layer_weights else None)
    return MergeSpec.for_zoo(zoo, method, params, variants, weights, tasks=included,
                             layer_weights=layer_weights or None, per_task=per_task)


def param_control(spec, key: str, label: str | None = None):
    label = label or spec.label
    help_ = spec.help + (f" Valid range {spec.range_text()}." if spec.range_text() else "")
    if spec.kind == "bool":
        return st.toggle(label, key=key, help=help_)
    if spec.kind == "choice":
        return st.radio(label, list(spec.choices), key=key, help=help_, horizontal=True)
    lo, hi = spec.slider_range
    if spec.kind == "int":
        return int(st.number_input(label, min_value=int(lo) if lo is not None else None,
                                   max_value=int(hi) if hi is not None else None, step=int(spec.step or 1),
                                   key=key, help=help_))
    if lo is None or hi is None:
        return coerce(spec, st.number_input(label, min_value=lo, max_value=hi, step=spec.step or 0.01, key=key,
                                            help=help_))
    return coerce(spec, st.slider(label, min_value=float(lo), max_value=float(hi), step=float(spec.step or 0.01),
                                  key=key, help=help_))


# -- the live part of the page: only this reruns when a control moves --------------------------------
@st.fragment
def explorer() -> None:
    state: MergeSpec = ss[f"{W}state"]
    if f"{W}pending" in ss:
        state = ss.pop(f"{W}pending")
        for note in push_state(state):
            st.warning(note, icon=":material/tune:")
    if ss.pop(f"{W}want_best", False) and state.has_lambda:
        bar = st.progress(0.0, text="λ sweep on validation")
        with ui.friendly_errors("λ sweep"):
            sweeps = ex.sweeps(state, progress=ui.progress_callback(bar, "λ sweep on validation"))
        bar.empty()
        best = sweeps["current"].best_lambda
        state = state.with_params(**{LAMBDA: best})
        ss[k_param(state.method, LAMBDA)] = best
        ss[f"{W}flash"] = (f"λ set to {best:g}, the best shared λ on validation for this choice of checkpoints "
                           f"(mean accuracy {sweeps['current'].best_val_mean:.1%}).")
    if f"{W}flash" in ss:
        st.success(ss.pop(f"{W}flash"), icon=":material/check_circle:")

    controls, results = st.columns([1.1, 2], gap="large")
    try:
        spec, problem = controls_spec(state), None
    except SammergeError as exc:  # e.g. weights that sum to 0: say so, keep the controls to fix it
        spec, problem = None, str(exc)
    # the numbers first: the results column is filled before the controls are redrawn
    with results:
        if problem:
            st.error(f"merge: {problem}", icon=":material/block:")
        else:
            results_panel(spec)
    with controls:
        controls_panel(ss[f"{W}method"])
    if problem:
        return
    if spec is not None:
        ss[f"{W}state"] = spec
        ui.set_current_merge(spec)
        # the download buttons make their files from this when clicked (see export_panel), not when drawn
        ss.setdefault(f"{W}export", {})["spec"] = spec
        query = spec.to_query()
    else:
        query = {**state.to_query(), "tasks": "-"}
    if dict(st.query_params) != query:
        st.query_params.from_dict(query)
    export_panel(spec)


def controls_panel(method: str) -> None:
    """Draw the controls (their values live in session state; :func:`controls_spec` reads them)."""
    st.subheader("1 · Method")
    methods = method_choices()
    st.selectbox("Merge method", methods, key=f"{W}method", format_func=lambda m: get_method(m).label,
                 help="How the task vectors τ_t = θ_t − θ₀ are combined into one. "
                      + " · ".join(f"{get_method(m).label}: {get_method(m).description}" for m in methods))
    spec = get_method(method)
    st.caption(spec.description + (f" [paper]({spec.reference})" if spec.reference else ""))
    for p in sorted(spec.global_params, key=lambda p: p.name != LAMBDA):
        param_control(p, k_param(method, p.name), "Global λ (scales the merged task vector)" if p.name == LAMBDA else None)

    st.subheader("2 · Tasks and checkpoints")
    wspec = next((p for p in spec.per_model_params if p.name == WEIGHTS), None)
    st.caption("Tick a task to merge it; choose its fine-tuned checkpoint (SAM or plain)"
               + ("; the slider is its own coefficient λ_t (its task vector is scaled by λ·λ_t)." if wspec else "."))
    shortcut_cols = st.columns(len(zoo.variants))
    for col, v in zip(shortcut_cols, zoo.variants):
        col.button(f"All {variant_label(v)}", key=f"{W}all_{v}", on_click=on_all_variant, args=(v,),
                   width="stretch", help=f"Use the {variant_label(v)} checkpoint for every task.")
    for t in zoo.tasks:
        c1, c2 = st.columns([1.25, 1], vertical_alignment="center")
        with c1:
            st.checkbox(t, key=k_inc(t), help=zoo.task_description(t) or None)
        with c2:
            st.radio(f"checkpoint for {t}", zoo.variants, key=k_var(t), horizontal=True,
                     format_func=variant_label, label_visibility="collapsed")
        if wspec:
            lo, hi = wspec.slider_range
            st.slider(f"λ_t for {t}", float(lo), float(hi), step=float(wspec.step), key=k_w(t),
                      label_visibility="collapsed", help=wspec.help)
    for pspec in optional_per_task(spec):
        with st.expander(f"Per-task {pspec.label.removeprefix('per-task ')} (optional)"):
            if st.toggle(f"Set {pspec.label.removeprefix('per-task ')} per task", key=k_on(pspec.name),
                         help=pspec.help):
                for t in zoo.tasks:
                    param_control(pspec, k_d(t, pspec.name), f"{pspec.label.removeprefix('per-task ')} for {t}")
            else:
                st.caption("Off: every task uses the global value.")


def grid_text(state: MergeSpec) -> str:
    lo, hi, step = state.spec.lambda_range
    return f"{lo:g}, {lo + step:g}, …, {hi:g}"


def results_panel(state: MergeSpec | None) -> None:
    if state is None:
        st.info("No task is selected: tick at least one task to merge.", icon=":material/touch_app:")
        return
    st.subheader("3 · Result")
    st.caption(f"Accuracy of the merged encoder with each task's frozen head, on the {ex.describe_evaluation()}. "
               "*Normalized* accuracy divides by the accuracy of the task's own fine-tuned model (100% = no loss "
               f"from merging). Means are over the selected tasks. Engine: {ex.engine_note()}.")
    cols = st.columns(2 + len(zoo.variants))
    showing = st.empty()
    estimate_note = st.empty()
    # the merge the user just changed first (streamed to the page), then its all-plain / all-SAM twins; on a slow
    # encoder an estimate from the first images per task first, refined in the background
    bar = None if ex.has_direction(state) else st.progress(0.0, text=f"{state.spec.label}: merged direction")
    with ui.friendly_errors("merge"), reporting(bar and ui.progress_callback(bar, f"{state.spec.label}")):
        look = ex.first_look(state, allow_estimate=ALLOW_ESTIMATE)  # the direction once per parameter set
    if bar is not None:
        bar.empty()
    cur, approx = look.summary, "" if look.exact else "≈ "
    cols[0].metric("Mean accuracy", f"{approx}{cur.mean:.1%}")
    cols[1].metric("Normalized accuracy", f"{approx}{cur.normalized:.1%}")
    showing.caption(f"Showing: {describe(state)}")
    if not look.exact:
        estimate_note.caption(f"Mean accuracy {look.text()} — refining…")
    if state.has_layer_weights:
        c1, c2 = st.columns([4, 1], vertical_alignment="center")
        c1.info("This merge carries per-layer coefficients λ_{t,g} (from a link or the **Layer coefficients** page) for "
                + ", ".join(state.layer_weights) + "; edit them there. Every number and export here includes them.",
                icon=":material/grid_on:")
        c2.button("Drop them", key=f"{W}drop_layers_btn", on_click=on_drop_layers)
    with ui.friendly_errors("merge"):
        cmp = ex.compare(state, allow_estimate=ALLOW_ESTIMATE)
        table = cmp.table()
        summaries = cmp.summaries()
    # the next slider step, merged and evaluated while the user looks (on a slow encoder: its estimate)
    ex.prefetch(ex.neighbours(state), estimate=ALLOW_ESTIMATE and ex.estimating())
    if not (look.exact and cmp.exact):  # (the refinement may finish in between: the next poll redraws the page)
        estimate_note.caption(f"Mean accuracy {look.text()} — refining…" + ("" if cmp.exact else (
            "  \nUntil the exact evaluation running in the background replaces them, the numbers on this page are an "
            f"{cmp.evaluation} (no SAM-vs-plain reading from an estimate).")))
        refresh_when_refined(state)
    approx = "" if cmp.exact else "≈ "
    others = {v: summaries[v] for v in zoo.variants}
    for col, (v, s) in zip(cols[2:], others.items()):
        ref = next((o for w, o in others.items() if w != v), None)
        delta = None if ref is None else f"{100 * (s['normalized'] - ref['normalized']):+.1f} pts"
        col.metric(f"All {variant_label(v)} (norm.)", f"{approx}{s['normalized']:.1%}", delta=delta,
                   help=f"The same merge with every selected task on its {variant_label(v)} checkpoint; "
                        "delta vs the other fine-tuning method.")
    sentence = sam_vs_plain_sentence(summaries) if cmp.exact else None  # no verdict from an estimate
    if sentence:
        st.markdown("**Reading:** " + sentence)

    view = st.segmented_control("View", ["Per-task bars", "Radar", "Table"], key=f"{W}view",
                                selection_mode="single", label_visibility="collapsed") or "Per-task bars"
    if view == "Per-task bars":
        ui.plot(bar_figure(cmp), key=f"{W}bars", filename="merge-bars")
        st.caption("Grey: pretrained encoder; pale: each task's own fine-tuned model; solid: the merged model with all "
                   "plain (blue) or all SAM (red) checkpoints.")
    elif view == "Radar":
        ui.plot(radar_figure(cmp), key=f"{W}radar", filename="merge-radar")
        st.caption("Each spoke is a task; the further out the better. A merge that kept every fine-tuned model's "
                   "skill would trace the dashed outline.")
    else:
        pct = [c for c in table.columns if c not in ("task", "included", "variant", "λ_t", "loss")]
        st.dataframe(table.style.format({c: "{:.1%}" for c in pct} | {"loss": "{:.3f}"}), hide_index=True,
                     width="stretch", key=f"{W}table")

    st.subheader("4 · λ sweep")
    if not state.has_lambda:
        st.caption(f"{state.spec.label} has no global λ: nothing to sweep.")
        return
    st.caption(f"Mean validation accuracy of this merge as the global λ goes over {grid_text(state)} (0: the pretrained model), for "
               "all-plain and all-SAM checkpoints; stars mark each curve's best λ, the dashed line the current λ.")
    c1, c2 = st.columns(2)
    c1.button("Set λ to the best on validation", key=f"{W}best", on_click=on_best_lambda, type="primary",
              help=f"Sweeps λ over {grid_text(state)} on the validation images and moves the global λ slider to the best.")
    compute = c2.button("Compute the λ sweep", key=f"{W}sweep",
                        help=f"{len(state.spec.lambda_grid())} merges per fine-tuning method, evaluated in batched passes.")
    sweeps = ex.cached_sweeps(state)
    if sweeps is None and compute:
        bar = st.progress(0.0, text="λ sweep")
        with ui.friendly_errors("λ sweep"):
            sweeps = ex.sweeps(state, progress=ui.progress_callback(bar, "λ sweep"))
        bar.empty()
    if sweeps is None:
        st.info("Click **Compute the λ sweep** to draw the curves (a few seconds).", icon=":material/show_chart:")
        return
    ui.plot(sweep_figure(sweeps, state, zoo.variants, ex.split), key=f"{W}sweepfig", filename="lambda-sweep")
    parts = [f"all {variant_label(v)}: best λ {sweeps[v].best_lambda:g} → {sweeps[v].best_val_mean:.1%}"
             for v in zoo.variants]
    st.caption("Best shared λ on validation — " + "; ".join(parts) + ".")


def refresh_when_refined(state: MergeSpec) -> None:
    """Poll (only while an estimate is on screen) until the exact evaluation of ``state`` is done, then redraw."""
    @st.fragment(run_every=1.0)
    def poll() -> None:
        if ex.is_exact_ready(state):
            st.rerun()
    poll()


def export_panel(state: MergeSpec | None) -> None:
    st.divider()
    st.subheader("5 · Export, share, import")
    if state is None:
        st.caption("Select at least one task to export a merge.")
        return
    with ui.friendly_errors("export"):
        cfg = ex.export_spec(state, allow_estimate=ALLOW_ESTIMATE)
    name = f"merge-{state.method}"
    # Every file is made when its button is clicked, from the spec the controls committed last (a plain dict in
    # session state: the callables run off the script thread). Data fixed at drawing time would be that of the last
    # run that reached these buttons, which sit below the slow results: a click while a run is under way, or after
    # a quick control change cut it short, would export an older merge than the controls and results show.
    box = ss[f"{W}export"]

    def at_click(make):
        return lambda: make(box["spec"])

    def comparison(s):  # estimates (saying so) while the exact evaluation runs, as on screen
        return ex.compare(s, allow_estimate=ALLOW_ESTIMATE)

    def card(s):
        return model_card(comparison(s), zoo)

    def sweep(s):
        return sweep_figure(ex.sweeps(s), s, zoo.variants, ex.split)
    share, downloads, imports = st.tabs(["Share link", "Downloads", "Import a configuration"])
    with share:
        st.markdown("The page's address always carries the current merge (method, parameters, tasks, checkpoints "
                    "and coefficients): copy it from the address bar, or this query string, to reopen the same merge.")
        st.code("?" + urlencode(state.to_query()), language=None)
    with downloads:
        st.caption("Our configuration records provenance (zoo, checkpoint files, sha256, library version) and the "
                   "measured per-task accuracies; the mergekit YAML runs with `mergekit-pytorch` on the same files.")
        st.markdown(f"**Every file below is made, when clicked, from the merge on screen:** {describe(state)}  \n"
                    + "Checkpoints (sha256): " + ", ".join(f"{t.task}/{variant_label(t.variant)} `{(t.sha256 or '?')[:10]}`"
                                                           for t in state.tasks))
        c = st.columns(3)
        c[0].download_button("Config (JSON)", at_click(lambda s: ex.export_spec(s, ALLOW_ESTIMATE).to_json()), f"{name}.json", "application/json",
                             key=f"{W}dl_json", on_click="ignore", width="stretch")
        c[1].download_button("Config (YAML)", at_click(lambda s: ex.export_spec(s, ALLOW_ESTIMATE).to_yaml()), f"{name}.yaml", "application/x-yaml",
                             key=f"{W}dl_yaml", on_click="ignore", width="stretch")
        if state.spec.mergekit is not None:
            c[2].download_button("mergekit YAML", at_click(to_mergekit_yaml), f"{name}.mergekit.yaml",
                                 "application/x-yaml", key=f"{W}dl_mk", on_click="ignore", width="stretch")
        else:
            c[2].button("mergekit YAML: no equivalent", key=f"{W}dl_mk", disabled=True, width="stretch",
                        help=no_equivalent_message(state.method))
        c = st.columns(3)
        c[0].download_button("Merged weights (.safetensors)", at_click(lambda s: weights_bytes(ex.merge(s), s)), f"{name}.safetensors",
                             "application/octet-stream", key=f"{W}dl_st", on_click="ignore",
                             width="stretch", help="The merged encoder; the config is in its metadata.")
        c[1].download_button("Model card (.md)", at_click(card), f"{name}.md", "text/markdown",
                             key=f"{W}dl_card", on_click="ignore", width="stretch")
        c[2].download_button("Results table (.csv)", at_click(lambda s: comparison(s).table().to_csv(index=False)), f"{name}-results.csv", "text/csv",
                             key=f"{W}dl_csv", on_click="ignore", width="stretch")
        c = st.columns(3)
        c[0].download_button("Bar chart (.html)", at_click(lambda s: figure_html(bar_figure(comparison(s)))),
                             f"{name}-bars.html", "text/html", key=f"{W}dl_bars", on_click="ignore",
                             width="stretch")
        c[1].download_button("Radar chart (.html)", at_click(lambda s: figure_html(radar_figure(comparison(s)))),
                             f"{name}-radar.html", "text/html", key=f"{W}dl_radar", on_click="ignore",
                             width="stretch")
        sweeps = ex.cached_sweeps(state)
        c[2].download_button("λ-sweep chart (.html)",
                             at_click(lambda s: figure_html(sweep(s))) if sweeps else "",
                             f"{name}-sweep.html", "text/html", key=f"{W}dl_sweep", on_click="ignore",
                             width="stretch", disabled=sweeps is None,
                             help=None if sweeps else "Compute the λ sweep first.")
        if png_available():
            c = st.columns(3)
            c[0].download_button("Bar chart (.png)", at_click(lambda s: figure_png(bar_figure(comparison(s)))),
                                 f"{name}-bars.png", "image/png", key=f"{W}png_bars", on_click="ignore", width="stretch")
            c[1].download_button("Radar chart (.png)", at_click(lambda s: figure_png(radar_figure(comparison(s)))),
                                 f"{name}-radar.png", "image/png", key=f"{W}png_radar", on_click="ignore",
                                 width="stretch")
            c[2].download_button("λ-sweep chart (.png)",
                                 at_click(lambda s: figure_png(sweep(s))) if sweeps else b"",
                                 f"{name}-sweep.png", "image/png", key=f"{W}png_sweep", on_click="ignore",
                                 width="stretch", disabled=sweeps is None)
            st.caption("Charts download as self-contained interactive HTML or as PNG (rendered with kaleido).")
        else:
            st.caption("Charts download as self-contained interactive HTML; for a PNG use the camera icon in each "
                       "chart's toolbar (rendered by your browser; server-side PNG needs the optional `kaleido`).")
        with st.expander("Show the configuration (JSON)"):
            st.code(cfg.to_json(), language="json")
    with imports:
        st.caption("Restore the controls from a configuration saved here (JSON or YAML) or a mergekit YAML whose "
                   "model files are named `task__variant.safetensors` like the zoo's.")
        st.file_uploader("Configuration file", type=["json", "yaml", "yml"], key=f"{W}import_file")
        st.text_area("…or paste it here", key=f"{W}import_text", height=120)
        st.button("Restore the controls from this configuration", key=f"{W}import", on_click=on_import)
        if f"{W}import_error" in ss:
            st.error(f"import: {ss[f'{W}import_error']}", icon=":material/block:")


explorer()
