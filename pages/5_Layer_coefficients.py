"""Per-layer coefficients: learn λ per task and layer group with AdaMerging, view them, edit them, evaluate."""
from __future__ import annotations

import json

import streamlit as st

from sammerge.webapp import jobs_view, ui
from sammerge.evaluation.adamerging import DATA_NOTE
from sammerge.explorer.figures import bar_figure
from sammerge.explorer.layers_view import (LEARNED, coefficient_grid, coefficient_heatmaps, entropy_figure,
                                           group_names_of, learned_sentence, spec_from_grid, uniform_grid)
from sammerge.explorer.style import variant_label
from sammerge.jobs.worker import get_worker
from sammerge.evaluation.learners import get_learner
from sammerge.merging import to_mergekit_yaml

W = "lc_"
ss = st.session_state
ui.page_setup("Layer coefficients", "🎚️")
st.title("Per-layer coefficients and AdaMerging")
st.markdown(
    "Task arithmetic scales every task vector by one λ. Here each task gets **one λ per layer group** of the encoder "
    "(the stem, each residual block, the head side): θ = θ₀ + Σ_t Σ_g λ_{t,g} τ_{t,g}. "
    "**AdaMerging** (Yang et al., ICLR 2024) learns these coefficients without labels: it minimizes the entropy of "
    f"the merged model's predictions on {DATA_NOTE}.")

zoo = ui.zoo_sidebar()
ex = ui.get_explorer(zoo)
learner = get_learner("adamerging")
groups = group_names_of(zoo)

# -- 1 · learn ------------------------------------------------------------------------------------------------
st.subheader("1 · Learn coefficients with AdaMerging")
settings = {}
cols = st.columns(5)
for i, p in enumerate(learner.global_params):
    key = f"{W}set_{p.name}"
    with cols[i % 5]:
        if p.choices:
            settings[p.name] = st.selectbox(p.label, list(p.choices), index=list(p.choices).index(p.default), key=key,
                                            help=p.help)
        elif p.kind == "int":
            lo, hi = p.slider_range
            settings[p.name] = int(st.number_input(p.label, int(lo), int(hi), int(p.default), step=int(p.step or 1),
                                                   key=key, help=p.help))
        else:
            lo, hi = p.slider_range
            settings[p.name] = float(st.number_input(p.label, float(lo), float(hi), float(p.default),
                                                     step=float(p.step or 0.01), key=key, help=p.help, format="%g"))
with ui.friendly_errors("AdaMerging settings"):
    settings = learner.validate_params(settings)
variants = list(zoo.variants)
results = {v: LEARNED.get(zoo, v, settings) for v in variants}
missing = [v for v, r in results.items() if r is None]
worker = get_worker()
job_key = f"adamerging:{zoo.path}:{json.dumps(settings, sort_keys=True)}"
job = worker.get(job_key)
if missing and (job is None or not job.active):
    st.caption(f"Runs {settings['steps']} Adam steps for each of {', '.join(map(variant_label, missing))} as a "
               "background job of this server (about a minute each on the glyph demo zoo): leaving the page does not stop "
               "it, another session sees the same job, **Cancel** keeps the best coefficients so far; the results are "
               "kept for every visitor.")
    if job is not None and job.status == "failed":
        st.error(f"AdaMerging: {job.error}", icon=":material/block:")
    if st.button(f"Learn for {' and '.join(map(variant_label, missing))}", type="primary", key=f"{W}learn"):
        def learn(progress, cancel_event, zoo=zoo, todo=tuple(missing), settings=settings):
            for i, v in enumerate(todo):
                def report(done, total, stage="", i=i, v=v):
                    if not cancel_event.is_set():  # once cancelled, the learner stops itself (best so far kept)
                        progress(i * total + done, len(todo) * total, f"AdaMerging ({variant_label(v)})")
                LEARNED.put(zoo, v, settings, learner(zoo, v, progress=report, should_stop=cancel_event.is_set,
                                                      **settings))
                if cancel_event.is_set():
                    break
            return True
        job, _ = worker.submit(job_key, learn, label=f"AdaMerging on {zoo.path.name}",
                               owner=jobs_view.current_session_id(), restart=True)


@st.fragment(run_every=1.0)
def learning_progress() -> None:
    """The learning job's progress (only this part reruns); the page reloads its results when it ends."""
    current = worker.get(job_key)
    if current is None:
        return
    if current.active:
        if current.owner != jobs_view.current_session_id():
            st.info("Another session started this learning job; its progress is shown here.", icon=":material/group:")
        jobs_view.record_panel(current.snapshot())
        jobs_view.cancel_button(current, f"{W}cancel")
    elif ss.get(f"{W}seen_job") != (job_key, current.finished):
        ss[f"{W}seen_job"] = (job_key, current.finished)
        st.rerun()


if job is not None:
    learning_progress()

done = {v: r for v, r in results.items() if r is not None}
if done:
    st.subheader("2 · Learned λ, plain vs SAM")
    st.markdown("**Reading:** " + learned_sentence(done))
    hi = max(settings["clamp_high"], max(max(row.values()) for r in done.values() for row in r.coefficients.values()))
    grids = {v: coefficient_grid(r.spec, r.groups if settings["granularity"] == "layer" else groups)
             for v, r in done.items()}
    ui.plot(coefficient_heatmaps(grids, zmin=settings["clamp_low"], zmax=hi), key=f"{W}heat",
            filename="adamerging-coefficients")
    st.caption("Each cell is a task's effective coefficient on one layer group (task-wise AdaMerging: the same λ on "
               "every group). Same colour scale on both sides: the declared clamp range.")
    ui.plot(entropy_figure({v: r.entropy for v, r in done.items()}, {v: r.holdout_entropy for v, r in done.items()},
                           {v: r.best_step for v, r in done.items()}), key=f"{W}entropy", filename="adamerging-entropy")
    st.caption("The diamond marks the returned step: the lowest entropy (plus the pull toward init λ, if set), on the "
               "held-out images when some are set (dashed), else on the fitted ones.")
    summaries = {v: ex.summary(r.spec) for v, r in done.items()}
    mcols = st.columns(len(done) * 2)
    for i, (v, s) in enumerate(summaries.items()):
        mcols[2 * i].metric(f"{variant_label(v)}: mean accuracy", f"{s.mean:.1%}")
        mcols[2 * i + 1].metric(f"{variant_label(v)}: normalized", f"{s.normalized:.1%}")
    st.caption(f"Accuracy of each learned merge on the {ex.describe_evaluation()} (labelled, unlike the images "
               "AdaMerging learned from).")
    dcols = st.columns(len(done) * 2)
    for i, (v, r) in enumerate(done.items()):
        dcols[2 * i].download_button(f"{variant_label(v)} spec (JSON)", r.spec.to_json(),
                                     f"adamerging-{settings['granularity']}-{v}.json", "application/json",
                                     key=f"{W}dl_json_{v}", on_click="ignore", width="stretch")
        with ui.friendly_errors("mergekit export"):
            dcols[2 * i + 1].download_button(f"{variant_label(v)} mergekit YAML", to_mergekit_yaml(r.spec),
                                             f"adamerging-{settings['granularity']}-{v}.yml", "text/yaml",
                                             key=f"{W}dl_mk_{v}", on_click="ignore", width="stretch")

# -- 3 · edit -------------------------------------------------------------------------------------------------
st.subheader("3 · Per-layer λ editor")
sources = ["uniform λ = 0.3"] + [f"learned ({variant_label(v)})" for v in done]
c1, c2 = st.columns([2, 1])
source = c1.radio("Start from", sources, horizontal=True, key=f"{W}source")
if ss.get(f"{W}loaded") != source:
    ss[f"{W}loaded"] = source
    ss[f"{W}version"] = ss.get(f"{W}version", 0) + 1
    if source.startswith("learned"):
        v = variants[[f"learned ({variant_label(x)})" for x in variants].index(source)]
        ss[f"{W}grid"] = coefficient_grid(done[v].spec, groups)
        ss[f"{W}variant"] = v  # the checkpoints the coefficients were learned for
    else:
        ss[f"{W}grid"] = uniform_grid(zoo.tasks, groups)
variant = c2.radio("Checkpoints", variants, horizontal=True, key=f"{W}variant", format_func=variant_label)
st.caption("Rows: tasks; columns: layer groups. Edit any cell (λ of that task on that group); the merge below is "
           "task arithmetic with exactly these coefficients.")
grid = st.data_editor(ss[f"{W}grid"], key=f"{W}editor_{ss[f'{W}version']}", width="stretch",
                      column_config={g: st.column_config.NumberColumn(g, step=0.01, format="%.3f") for g in groups})
with ui.friendly_errors("merge"):
    spec = spec_from_grid(zoo, grid.astype(float), variant, notes="per-layer coefficients from the sammerge editor")
    cmp = ex.compare(spec)
    summary = cmp.summary()
m = st.columns(2 + len(variants))
m[0].metric("Mean accuracy", f"{summary.mean:.1%}")
m[1].metric("Normalized accuracy", f"{summary.normalized:.1%}")
for col, v in zip(m[2:], variants):
    col.metric(f"Same λ, all {variant_label(v)} (norm.)", f"{cmp.summary(v).normalized:.1%}")
ui.plot(bar_figure(cmp), key=f"{W}bars", filename="per-layer-merge")
e1, e2 = st.columns(2)
e1.download_button("Merge config (JSON)", spec.to_json(), "per-layer-merge.json", "application/json",
                   key=f"{W}dl_spec", on_click="ignore", width="stretch")
with ui.friendly_errors("mergekit export"):
    e2.download_button("mergekit YAML (per-filter weights)", to_mergekit_yaml(spec), "per-layer-merge.yml",
                       "text/yaml", key=f"{W}dl_mk", on_click="ignore", width="stretch")
