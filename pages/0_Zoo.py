"""sammerge — home page (the Zoo): choose a zoo and see what is in it. Start the app with `streamlit run app.py`."""
from __future__ import annotations

import streamlit as st

from sammerge.webapp import ui, zoo_picker
from sammerge.analytics.diagnostics import diagnose_zoo
from sammerge.analytics.seed_study import (fair_table, load_study, method_reading, method_table, study_reading,
                                           study_table)
from sammerge.explorer.analysis_views import checkpoint_table, load_analysis_for, sharpness_sentence
from sammerge.explorer.diagnostics_view import merge_curve_figure, own_and_damage_figure, reading, summary_table
ui.page_setup("Zoo")
st.title("sammerge · model-merging explorer")
st.markdown(
    "Fine-tune one pretrained model on many tasks, then merge the fine-tuned models into one by **task "
    "arithmetic** (θ = θ₀ + Σ λₜ τₜ, with task vectors τₜ = θₜ − θ₀). Merging loses accuracy through "
    "*parameter interference*. Lee et al. (ICLR 2025) report that fine-tuning with **sharpness-aware "
    "minimization (SAM)** gives task vectors that interfere less. This app lets you check that claim on "
    "real checkpoints: in a zoo built here every task is fine-tuned from the same pretrained encoder on the same "
    "batches once per variant — plainly, with SAM, with ASAM — so the optimizer is the only difference.")

zoo = ui.zoo_sidebar()
m = zoo.manifest
table = zoo.table()
analysis = load_analysis_for(zoo)

st.subheader(f"Zoo `{zoo.path.name}`")
if m.recipe is not None:
    st.caption(f"preset **{m.recipe.preset}** · seed {m.seed} · {len(zoo.tasks)} tasks · variants: "
               f"{', '.join(v.describe() + f' (`{v.name}`)' for v in m.variants)} · encoder: timm ResNet-GN "
               f"{list(m.encoder.channels)} · built {m.created} on {m.device} in {m.build_wall_time_s:.0f} s")
elif m.prefix is not None:  # the EfficientNet-Lite0 zoo (sammerge.training.lite0_zoo)
    r = m.source.get("recipe", {})
    st.caption(f"**{m.describe()}** · {len(zoo.tasks)} tasks · variants: "
               f"{', '.join(v.describe() + f' (`{v.name}`)' for v in m.variants)} · weights: `{m.source.get('weights')}` · "
               f"fine-tuning: {r.get('optimizer')} lr {r.get('lr')}, {r.get('steps')} steps, batch {r.get('batch_size')} on "
               f"the frozen prefix's activations · images: {m.data.get('stored')}, {m.images.size} px grey · task vectors "
               f"stored in float16 · built {m.created} in {m.build_wall_time_s:.0f} s")
else:
    img = m.images
    budget = f"at most {img.max_images_per_split} per split (seed {img.subset_seed})" if img.max_images_per_split else "all"
    st.caption(f"imported from **{m.source.get('format')}** checkpoints · {len(zoo.tasks)} tasks · variants: "
               f"{', '.join(f'`{v}`' for v in zoo.variants)} · encoder: timm `{m.encoder.model}` · images: val and "
               f"test, {budget}, resize {img.size} + centre crop {img.crop} ({img.interpolation}) · imported "
               f"{m.created} in {m.build_wall_time_s:.0f} s")

means = table.groupby("variant")[["pretrained test", "fine-tuned test"]].mean().reindex(zoo.variants)
cols = st.columns(1 + len(means))
cols[0].metric("Pretrained + heads, mean test accuracy", f"{means['pretrained test'].iloc[0]:.1%}")
for col, (variant, row) in zip(cols[1:], means.iterrows()):
    col.metric(f"Fine-tuned ({variant}), mean test accuracy", f"{row['fine-tuned test']:.1%}",
               delta=f"{100 * (row['fine-tuned test'] - row['pretrained test']):+.1f} pts vs pretrained")

st.markdown("**Every checkpoint** — accuracy of the pretrained encoder with the task's frozen head, and of the "
            "fine-tuned encoder with the same head (val and test splits; " +
            ("test fonts are never seen in training)." if m.recipe is not None else "the images stored in the zoo)."))
shown = checkpoint_table(zoo, analysis).drop(columns=["time (s)"])
pct_cols = ["pretrained val", "pretrained test", "fine-tuned val", "fine-tuned test", "gain (test)"]
sharp_fmt = {c: "{:.3g}" for c in ("λ_max (Hessian)", "Hessian trace") if c in shown.columns}
st.dataframe(shown.style.format({c: "{:.1%}" for c in pct_cols} | {"‖τ‖": "{:.2f}"} | sharp_fmt,
                                na_rep="—"),
             hide_index=True, width="stretch")
if analysis is not None:
    st.caption("Sharpness: top Hessian eigenvalue λ_max and Hessian trace of each fine-tuned checkpoint on a fixed "
               "batch of its task (lower = flatter). " + sharpness_sentence(analysis, "top_eigenvalue"))
else:
    st.caption(f"No sharpness analysis yet: run `sammerge analyze {zoo.path}` or open **Sharpness & landscape** to "
               "compute it; its numbers then appear in this table.")

if m.imported:
    st.markdown("**Where each checkpoint came from** — converted once by `sammerge zoo import`; a merge config "
                "may name the original files (matched by their sha256).")
    st.dataframe(zoo_picker.provenance_table(zoo), hide_index=True, width="stretch")

pivot = table.pivot(index="task", columns="variant", values="fine-tuned test").reindex(zoo.tasks)
pivot.insert(0, "pretrained", table.drop_duplicates("task").set_index("task")["pretrained test"].reindex(zoo.tasks))
st.markdown("**Test accuracy per task**")
st.bar_chart(pivot, stack=False, height=300)
st.subheader("Does this zoo merge? Regime diagnostics")
st.caption("Task arithmetic θ₀ + λ Σ τ_t over λ (validation, 256 images per task), the share of the pretrained → "
           "individual gap it closes, task-vector sizes ‖τ‖/‖θ₀‖ and cosines, and per task its **own gain** along "
           "θ₀ + α τ_t against the **damage** from the others, θ₀ + β Σ_{s≠t} τ_s: merging can work when own gains "
           "come early and the damage is small.")
with ui.friendly_errors("diagnostics"):
    diag = diagnose_zoo(zoo, cached_only=True)
    if diag is None and st.button("Compute the diagnostics", key="zoo_diag", type="primary",
                                  help=f"`sammerge diagnose {zoo.path}` computes the same; cached in the zoo."):
        bar = st.progress(0.0, text="diagnostics")
        diag = diagnose_zoo(zoo, progress=ui.progress_callback(bar, "diagnostics"))
        bar.empty()
if diag is not None:
    st.dataframe(summary_table(diag).style.format(precision=3, na_rep="—"), hide_index=True, width="stretch",
                 key="zoo_diag_table")
    st.markdown("**Reading:** " + reading(diag))
    c1, c2 = st.columns(2)
    with c1:
        ui.plot(merge_curve_figure(diag), key="zoo_diag_curve", filename="task-arithmetic-curve")
    with c2:
        task = st.selectbox("Task", zoo.tasks, key="zoo_diag_task")
        ui.plot(own_and_damage_figure(diag, task), key="zoo_diag_task_fig", filename=f"own-vs-damage-{task}")

study = load_study(zoo)
if study is not None:
    st.subheader("Plain vs SAM over seeds")
    st.caption(f"This zoo's recipe built with seeds {', '.join(map(str, study['summary']['seeds']))} "
               "(`benchmarks/demo_regime.py`): test accuracy, mean ± std over seeds; task arithmetic at each seed's "
               "best validation λ. One seed is a sample: these are the numbers to compare variants by.")
    st.dataframe(study_table(study), hide_index=True, width="stretch", key="zoo_study_table")
    st.markdown("**Fair comparisons** (SAM-type variant minus plain, points): " + study_reading(study))
    st.dataframe(fair_table(study), hide_index=True, width="stretch", key="zoo_study_fair")
    methods = method_table(study)
    if methods is not None:
        st.markdown("**Does SAM help method X?** Every merge method at each seed's best validation λ (test split, "
                    "mean ± std over seeds); differences are the SAM-type variant minus plain, in points. "
                    + method_reading(study))
        st.dataframe(methods, hide_index=True, width="stretch", key="zoo_study_methods")

st.markdown("**Next:** open **Merge explorer** in the sidebar to merge these checkpoints and compare SAM with plain; "
            "**Sharpness & landscape** and **Interference** show why merges succeed or fail; **Paper table** gives "
            "every merge method at its best λ.")
