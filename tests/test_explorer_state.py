"""The explorer page's controls ⇄ spec codec (a plain dict stands in for Streamlit's session state), its config
import, and what one slider move costs: every spec validated once, every twin built once."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sammerge.merging import MergeSpec, to_mergekit_yaml
from sammerge.webapp import explorer_state as es
from sammerge.zoo import open_zoo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zoo(tiny_zoo):
    return open_zoo(tiny_zoo)


def specs(zoo):
    t = zoo.tasks
    return [
        MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.45}, {t[0]: "sam", t[2]: "plain"},
                          weights={t[0]: 1.3, t[2]: 0.6}),
        MergeSpec.for_zoo(zoo, "ties", {"lambda": 0.9, "density": 0.3, "vote": "unweighted"}, "plain",
                          densities={t[0]: 0.5, t[1]: None, t[2]: 0.25}),
        MergeSpec.for_zoo(zoo, "consensus_ta", {"lambda": 1.1, "k": 1}, "sam",
                          per_task={"mask_lambdas": {t[0]: 0.4, t[1]: 0.2, t[2]: 0.5}}),
        MergeSpec.for_zoo(zoo, "slerp", {"t": 0.25}, "sam", tasks=t[1:]),
        MergeSpec.for_zoo(zoo, "regmean", {"lambda": 1.2, "image_split": "val", "images_per_task": 64}, "sam"),
    ]


def test_push_then_read_gives_the_same_merge(zoo):
    for spec in specs(zoo):
        ss: dict = {}
        assert es.push_state(ss, spec, zoo) == []
        again = es.controls_spec(ss, spec, zoo)
        assert again.key() == spec.key(), spec.method
        # from an older state of the same method (other parameters, other tasks): the controls alone decide
        older = MergeSpec.for_zoo(zoo, spec.method, None, "plain", tasks=zoo.tasks[:2])
        assert es.controls_spec(ss, older, zoo).key() == spec.key(), spec.method


def test_values_outside_a_control_are_moved_into_its_range_and_said_so(zoo):
    spec = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 3.5}, "sam", weights={zoo.tasks[0]: 2.5})
    ss: dict = {}
    notes = es.push_state(ss, spec, zoo)
    assert ss[es.k_param("task_arithmetic", "lambda")] == 2.0 and ss[es.k_w(zoo.tasks[0])] == 2.0
    assert any("lambda = 3.5" in n and "set to 2" in n for n in notes) and len(notes) == 2


def test_a_method_switch_keeps_lambda_and_ticks_a_task_set_it_can_merge(zoo):
    ss: dict = {}
    start = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.7}, "sam")
    es.push_state(ss, start, zoo)
    ss[f"{es.W}method"] = "tsv_m"
    got = es.controls_spec(ss, start, zoo)
    assert got.method == "tsv_m" and got.params["lambda"] == 0.7
    ss[f"{es.W}method"] = "slerp"
    got = es.controls_spec(ss, got, zoo)
    assert got.method == "slerp" and len(got.tasks) == 2
    assert [t for t in zoo.tasks if ss[es.k_inc(t)]] == got.task_names
    for t in zoo.tasks:
        ss[es.k_inc(t)] = False
    assert es.controls_spec(ss, got, zoo) is None


def test_import_reads_ours_and_mergekit_and_names_the_problem(zoo):
    spec = specs(zoo)[0]
    for text in (spec.to_json(), spec.to_yaml(), to_mergekit_yaml(spec)):
        got, warnings, problem = es.import_config(text, zoo)
        assert problem is None and got.key() == spec.key(), text[:40]
    for text, match in (("", "paste a configuration"), ("{not: [valid", "invalid YAML"),
                        ('{"method": "nope", "base_model": "b", "tasks": [{"task": "digits", "checkpoint": "c"}]}',
                         "unknown merge method 'nope'"), ('{"method": "ties", "tasks": []}', "field 'tasks'")):
        got, _, problem = es.import_config(text, zoo)
        assert got is None and match in problem


def test_one_slider_move_validates_each_spec_once_and_builds_each_twin_once(monkeypatch, tiny_zoo):
    """Through the real page (AppTest): during one λ move no spec (by key) is validated twice."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SAMMERGE_ZOO", str(tiny_zoo))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "pages" / "1_Merge_explorer.py"), default_timeout=120).run()
    assert not at.exception
    zoo = open_zoo(tiny_zoo)  # this test's own reference specs, built before counting
    moved = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.55}, "sam")
    twins = {moved.with_variants(v, zoo).key() for v in zoo.variants} - {moved.key()}
    validated: Counter = Counter()
    original = MergeSpec.model_post_init

    def counting(self, context):
        original(self, context)
        validated[self.key()] += 1
    monkeypatch.setattr(MergeSpec, "model_post_init", counting)
    at.slider(key="ex_p_task_arithmetic_lambda").set_value(0.55).run()
    assert not at.exception
    assert validated[moved.key()] == 1, "the moved spec is validated once"
    # (a twin the server's explorer built before, e.g. for another test, is not built again: ≤ 1)
    assert all(validated[k] <= 1 for k in twins), "each twin is built at most once"
    assert max(validated.values()) == 1, {k[:60]: n for k, n in validated.items() if n > 1}
    # the move, its twins, and its two λ neighbours with theirs (prefetched): nothing else
    assert sum(validated.values()) <= 3 * (1 + len(twins)), validated
