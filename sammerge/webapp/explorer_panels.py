"""The merge explorer page's panels (Streamlit): the controls, the results, the exports, and their callbacks.

The page (``pages/1_Merge_explorer.py``) arranges them; the controls ⇄ spec codec is
:mod:`sammerge.webapp.explorer_state`, the numbers come from :class:`sammerge.explorer.service.Explorer`.
"""
from __future__ import annotations

import contextlib
from urllib.parse import urlencode

import streamlit as st

from sammerge.explorer.exports import figure_html, figure_png, model_card, png_available, weights_bytes
from sammerge.explorer.figures import bar_figure, radar_figure, sam_vs_plain_sentence, sweep_figure
from sammerge.explorer.service import method_choices
from sammerge.explorer.style import describe, variant_label
from sammerge.merging import LAMBDA, WEIGHTS, MergeSpec, get_method, to_mergekit_yaml
from sammerge.merging.mergekit import mergekit_unavailable
from sammerge.progress import reporting
from sammerge.webapp import ui
from sammerge.webapp.reruns import give_way
from sammerge.webapp.explorer_state import (W, clamp_for, coerce, import_config, k_d, k_inc, k_on, k_param, k_var, k_w,
                                            optional_per_task)

__all__ = ["ExplorerPanels"]

ss = st.session_state


def remembered(key: str) -> dict:
    """``key`` and ``on_change`` for a lazy tab set or expander (only the open part is drawn) that survive Streamlit
    forgetting their state: a callback copies each change to a plain key, and a run that finds the widget's own key
    gone restores it from that copy. Without it, the soak (benchmarks/soak.py) once saw the Downloads tab selected in
    the browser and empty for 30 s: the server had read the tab set as closed (streamlit#11266, as for the controls)."""
    copy = f"{key}_v"
    if key not in ss and copy in ss:
        ss[key] = ss[copy]

    def keep() -> None:
        ss[copy] = ss[key]
    return {"key": key, "on_change": keep}


def _index(options: list, held) -> int:
    """Position of the held value among a widget's options (0 when it holds none of them)."""
    return options.index(held) if held in options else 0


class ExplorerPanels:
    """The panels of one run of the page: ``ex`` scores, ``zoo`` is shown, ``allow_estimate`` from the sidebar."""

    def __init__(self, ex, zoo, allow_estimate: bool) -> None:
        self.ex, self.zoo, self.allow_estimate = ex, zoo, allow_estimate

    def param_control(self, spec, key: str, label: str | None = None):
        """One parameter's widget; its declared default is the value the session holds (see :meth:`controls`)."""
        label = label or spec.label
        help_ = spec.help + (f" Valid range {spec.range_text()}." if spec.range_text() else "")
        held = ss.get(key)
        if spec.kind == "bool":
            return st.toggle(label, value=bool(held), key=key, help=help_)
        if spec.kind == "choice":
            choices = list(spec.choices)
            return st.radio(label, choices, index=_index(choices, held), key=key, help=help_, horizontal=True)
        lo, hi = spec.slider_range
        if spec.kind == "int":
            return int(st.number_input(label, min_value=int(lo) if lo is not None else None,
                                       max_value=int(hi) if hi is not None else None, step=int(spec.step or 1),
                                       value=int(clamp_for(spec, int(held))) if held is not None else "min", key=key,
                                       help=help_))
        if lo is None or hi is None:
            return coerce(spec, st.number_input(label, min_value=lo, max_value=hi, step=spec.step or 0.01, key=key,
                                                value=float(clamp_for(spec, float(held))) if held is not None else "min",
                                                help=help_))
        return coerce(spec, st.slider(label, min_value=float(lo), max_value=float(hi), step=float(spec.step or 0.01),
                                      value=float(clamp_for(spec, float(held))) if held is not None else float(lo), key=key,
                                      help=help_))

    def controls(self, method: str) -> None:
        """Draw the controls (their values live in session state; :func:`controls_spec` reads them).

        Every widget declares the value the session holds as its default (a default is not part of a keyed widget's
        identity). A browser that forgot a widget's value — Streamlit's own races around fragment reruns — then shows
        and sends back the merge on screen instead of the widget's bare default (another method, λ at its minimum,
        every task unticked: benchmarks/soak.py), and no run overwrites a value the browser holds."""
        st.subheader("1 · Method")
        methods = method_choices()
        st.selectbox("Merge method", methods, index=_index(methods, ss.get(f"{W}method")), key=f"{W}method",
                     format_func=lambda m: get_method(m).label,
                     help="How the task vectors τ_t = θ_t − θ₀ are combined into one. "
                          + " · ".join(f"{get_method(m).label}: {get_method(m).description}" for m in methods))
        spec = get_method(method)
        st.caption(spec.description + (f" [paper]({spec.reference})" if spec.reference else ""))
        for p in sorted(spec.global_params, key=lambda p: p.name != LAMBDA):
            self.param_control(p, k_param(method, p.name), "Global λ (scales the merged task vector)" if p.name == LAMBDA else None)

        st.subheader("2 · Tasks and checkpoints")
        wspec = next((p for p in spec.per_model_params if p.name == WEIGHTS), None)
        st.caption("Tick a task to merge it; choose its fine-tuned checkpoint (SAM or plain)"
                   + ("; the slider is its own coefficient λ_t (its task vector is scaled by λ·λ_t)." if wspec else "."))
        shortcut_cols = st.columns(len(self.zoo.variants))
        for col, v in zip(shortcut_cols, self.zoo.variants):
            col.button(f"All {variant_label(v)}", key=f"{W}all_{v}", on_click=self.on_all_variant, args=(v,),
                       width="stretch", help=f"Use the {variant_label(v)} checkpoint for every task.")
        for t in self.zoo.tasks:
            c1, c2 = st.columns([1.25, 1], vertical_alignment="center")
            with c1:
                st.checkbox(t, value=bool(ss.get(k_inc(t))), key=k_inc(t), help=self.zoo.task_description(t) or None)
            with c2:
                st.radio(f"checkpoint for {t}", self.zoo.variants, index=_index(self.zoo.variants, ss.get(k_var(t))),
                         key=k_var(t), horizontal=True, format_func=variant_label, label_visibility="collapsed")
            if wspec:
                lo, hi = wspec.slider_range
                st.slider(f"λ_t for {t}", float(lo), float(hi), value=float(clamp_for(wspec, float(ss.get(k_w(t), 1.0)))),
                          step=float(wspec.step),
                          key=k_w(t), label_visibility="collapsed", help=wspec.help)
        for pspec in optional_per_task(spec):
            with st.expander(f"Per-task {pspec.label.removeprefix('per-task ')} (optional)"):
                if st.toggle(f"Set {pspec.label.removeprefix('per-task ')} per task", value=bool(ss.get(k_on(pspec.name))),
                             key=k_on(pspec.name),
                             help=pspec.help):
                    for t in self.zoo.tasks:
                        self.param_control(pspec, k_d(t, pspec.name), f"{pspec.label.removeprefix('per-task ')} for {t}")
                else:
                    st.caption("Off: every task uses the global value.")

    def grid_text(self, state: MergeSpec) -> str:
        lo, hi, step = state.spec.lambda_range
        return f"{lo:g}, {lo + step:g}, …, {hi:g}"

    def results(self, state: MergeSpec | None) -> None:
        if state is None:
            st.info("No task is selected: tick at least one task to merge.", icon=":material/touch_app:")
            return
        st.subheader("3 · Result")
        st.caption(f"Accuracy of the merged encoder with each task's frozen head, on the {self.ex.describe_evaluation()}. "
                   "*Normalized* accuracy divides by the accuracy of the task's own fine-tuned model (100% = no loss "
                   f"from merging). Means are over the selected tasks. Engine: {self.ex.engine_note()}.")
        cols = st.columns(2 + len(self.zoo.variants))
        showing = st.empty()
        estimate_note = st.empty()
        # the merge the user just changed first (streamed to the page), then its all-plain / all-SAM twins; on a slow
        # encoder an estimate from the first images per task first, refined in the background
        bar = None if self.ex.has_direction(state) else st.progress(0.0, text=f"{state.spec.label}: merged direction")
        waiting = (st.spinner("Measuring the pretrained encoder and every fine-tuned model on the evaluation images "
                              "(once per server)…") if not self.ex.has_references() and not (self.allow_estimate and self.ex.estimating())
                   else contextlib.nullcontext())
        # an error is shown in place of the numbers and the page goes on: the controls below stay to change the input
        with ui.errors_shown("merge") as shown, waiting, reporting(bar and ui.progress_callback(bar, f"{state.spec.label}")):
            look = self.ex.first_look(state, allow_estimate=self.allow_estimate)  # the direction once per parameter set
        if bar is not None:
            bar.empty()
        if shown.failed:
            return
        cur, approx = look.summary, "" if look.exact else "≈ "
        cols[0].metric("Mean accuracy", f"{approx}{cur.mean:.1%}")
        cols[1].metric("Normalized accuracy", f"{approx}{cur.normalized:.1%}")
        showing.caption(f"Showing: {describe(state)}")
        if not look.exact:
            estimate_note.caption(f"Mean accuracy {look.text()} — refining…")
        give_way()  # the slider moved again meanwhile: its run starts now, not after this one's twins and figures
        if state.has_layer_weights:
            c1, c2 = st.columns([4, 1], vertical_alignment="center")
            c1.info("This merge carries per-layer coefficients λ_{t,g} (from a link or the **Layer coefficients** page) for "
                    + ", ".join(state.layer_weights) + "; edit them there. Every number and export here includes them.",
                    icon=":material/grid_on:")
            c2.button("Drop them", key=f"{W}drop_layers_btn", on_click=self.on_drop_layers)
        with ui.errors_shown("merge") as shown:
            cmp = self.ex.compare(state, allow_estimate=self.allow_estimate)
            table = cmp.table()
            summaries = cmp.summaries()
        if shown.failed:
            return
        give_way()
        # the next slider step, merged and evaluated while the user looks (on a slow encoder: its estimate)
        self.ex.prefetch(self.ex.neighbours(state), estimate=self.allow_estimate and self.ex.estimating())
        if not (look.exact and cmp.exact):  # (the refinement may finish in between: the next poll redraws the page)
            estimate_note.caption(f"Mean accuracy {look.text()} — refining…" + ("" if cmp.exact else (
                "  \nUntil the exact evaluation running in the background replaces them, the numbers on this page are an "
                f"{cmp.evaluation} (no SAM-vs-plain reading from an estimate).")))
            self.refresh_when_refined(state)
        approx = "" if cmp.exact else "≈ "
        others = {v: summaries[v] for v in self.zoo.variants}
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
        st.caption(f"Mean validation accuracy of this merge as the global λ goes over {self.grid_text(state)} (0: the pretrained model), for "
                   "all-plain and all-SAM checkpoints; stars mark each curve's best λ, the dashed line the current λ.")
        c1, c2 = st.columns(2)
        c1.button("Set λ to the best on validation", key=f"{W}best", on_click=self.on_best_lambda, type="primary",
                  help=f"Sweeps λ over {self.grid_text(state)} on the validation images and moves the global λ slider to the best.")
        compute = c2.button("Compute the λ sweep", key=f"{W}sweep",
                            help=f"{len(state.spec.lambda_grid())} merges per fine-tuning method, evaluated in batched passes.")
        sweeps = self.ex.cached_sweeps(state)
        if sweeps is None and compute:
            bar = st.progress(0.0, text="λ sweep")
            with ui.friendly_errors("λ sweep"):
                sweeps = self.ex.sweeps(state, progress=ui.progress_callback(bar, "λ sweep"))
            bar.empty()
        if sweeps is None:
            st.info("Click **Compute the λ sweep** to draw the curves (a few seconds).", icon=":material/show_chart:")
            return
        ui.plot(sweep_figure(sweeps, state, self.zoo.variants, self.ex.split), key=f"{W}sweepfig", filename="lambda-sweep")
        parts = [f"all {variant_label(v)}: best λ {sweeps[v].best_lambda:g} → {sweeps[v].best_val_mean:.1%}"
                 for v in self.zoo.variants]
        st.caption("Best shared λ on validation — " + "; ".join(parts) + ".")

    def refresh_when_refined(self, state: MergeSpec) -> None:
        """Poll (only while an estimate is on screen) until the exact evaluation of ``state`` is done, then redraw."""
        @st.fragment(run_every=1.0)
        def poll() -> None:
            if self.ex.is_exact_ready(state):
                st.rerun()
        poll()

    def export(self, state: MergeSpec | None) -> None:
        st.divider()
        st.subheader("5 · Export, share, import")
        if state is None:
            st.caption("Select at least one task to export a merge.")
            return
        name = f"merge-{state.method}"
        # Every file is made when its button is clicked, from the spec the controls committed last (a plain dict in
        # session state: the callables run off the script thread). Data fixed at drawing time would be that of the last
        # run that reached these buttons, which sit below the slow results: a click while a run is under way, or after
        # a quick control change cut it short, would export an older merge than the controls and results show.
        box = ss[f"{W}export"]

        def at_click(make):
            return lambda: make(box["spec"])

        def comparison(s):  # estimates (saying so) while the exact evaluation runs, as on screen
            return self.ex.compare(s, allow_estimate=self.allow_estimate)

        def card(s):
            return model_card(comparison(s), self.zoo)

        def sweep(s):
            return sweep_figure(self.ex.sweeps(s), s, self.zoo.variants, self.ex.split)
        # Only the open tab is drawn (Streamlit's lazy tabs: switching reruns the explorer). Drawn on every move, the
        # downloads and the import form were ~30 of the fragment's elements for the browser to redraw each time.
        share, downloads, imports = st.tabs(["Share link", "Downloads", "Import a configuration"],
                                            **remembered(f"{W}export_tab"))
        if share.open:
            with share:
                st.markdown("The page's address always carries the current merge (method, parameters, tasks, checkpoints "
                            "and coefficients): copy it from the address bar, or this query string, to reopen the same merge.")
                st.code("?" + urlencode(state.to_query()), language=None)
        if downloads.open:
            with downloads:
                st.caption("Our configuration records provenance (zoo, checkpoint files, sha256, library version) and the "
                           "measured per-task accuracies; the mergekit YAML runs with `mergekit-pytorch` on the same files.")
                st.markdown(f"**Every file below is made, when clicked, from the merge on screen:** {describe(state)}  \n"
                            + "Checkpoints (sha256): " + ", ".join(f"{t.task}/{variant_label(t.variant)} `{(t.sha256 or '?')[:10]}`"
                                                                   for t in state.tasks))
                c = st.columns(3)
                c[0].download_button("Config (JSON)", at_click(lambda s: self.ex.export_spec(s, self.allow_estimate).to_json()), f"{name}.json", "application/json",
                                     key=f"{W}dl_json", on_click="ignore", width="stretch")
                c[1].download_button("Config (YAML)", at_click(lambda s: self.ex.export_spec(s, self.allow_estimate).to_yaml()), f"{name}.yaml", "application/x-yaml",
                                     key=f"{W}dl_yaml", on_click="ignore", width="stretch")
                mergekit_problem = mergekit_unavailable(state)
                if mergekit_problem is None:
                    c[2].download_button("mergekit YAML", at_click(to_mergekit_yaml), f"{name}.mergekit.yaml",
                                         "application/x-yaml", key=f"{W}dl_mk", on_click="ignore", width="stretch")
                else:
                    c[2].button("mergekit YAML: " + ("no equivalent" if state.spec.mergekit is None else "not for task vectors"),
                                key=f"{W}dl_mk", disabled=True, width="stretch",
                                help=mergekit_problem)
                c = st.columns(3)
                c[0].download_button("Merged weights (.safetensors)", at_click(lambda s: weights_bytes(self.ex.merge(s), s)), f"{name}.safetensors",
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
                sweeps = self.ex.cached_sweeps(state)
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
                shown = st.expander("Show the configuration (JSON)", **remembered(f"{W}config_open"))
                if shown.open:  # made only when opened
                    with shown, ui.friendly_errors("export"):
                        st.code(self.ex.export_spec(state, allow_estimate=self.allow_estimate).to_json(),
                                language="json")
        if imports.open:
            with imports:
                st.caption("Restore the controls from a configuration saved here (JSON or YAML) or a mergekit YAML whose "
                           "model files are named `task__variant.safetensors` like the zoo's.")
                st.file_uploader("Configuration file", type=["json", "yaml", "yml"], key=f"{W}import_file")
                st.text_area("…or paste it here", key=f"{W}import_text", height=120)
                st.button("Restore the controls from this configuration", key=f"{W}import", on_click=self.on_import)
                if f"{W}import_error" in ss:
                    st.error(f"import: {ss[f'{W}import_error']}", icon=":material/block:")

    def request(self, state: MergeSpec, message: str | None = None) -> None:
        """Callback helper: apply ``state`` to the controls at the start of the next run."""
        ss[f"{W}pending"] = state
        if message:
            ss[f"{W}flash"] = message

    def on_all_variant(self, variant: str) -> None:
        for t in self.zoo.tasks:  # every task's checkpoint radio, merged or not
            ss[k_var(t)] = variant
        self.request(ss[f"{W}state"].with_variants(variant, self.zoo))

    def on_drop_layers(self) -> None:
        state = ss[f"{W}state"]
        ss[f"{W}state"] = state.evolve(tasks=[t.model_copy(update={"layer_weights": None}) for t in state.tasks])

    def on_best_lambda(self) -> None:
        ss[f"{W}want_best"] = True

    def on_import(self) -> None:
        upload = ss.get(f"{W}import_file")
        text = upload.getvalue().decode("utf-8", errors="replace") if upload is not None else \
            (ss.get(f"{W}import_text") or "")
        state, warnings, problem = import_config(text, self.zoo)
        if problem:
            ss[f"{W}import_error"] = problem
            return
        ss.pop(f"{W}import_error", None)
        self.request(state, "Configuration imported: the controls now show it." + "".join(f" ⚠️ {w}" for w in warnings))
