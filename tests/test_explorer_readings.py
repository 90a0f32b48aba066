"""The paper-table reading follows the numbers: normalized and absolute comparisons are both stated."""
import pandas as pd

from sammerge.explorer.paper import paper_sentence


def _frame(norm_sam, abs_sam):
    rows = []
    for i, (ns, ab) in enumerate(zip(norm_sam, abs_sam)):
        rows.append({"variant": "plain", "method": f"m{i}", "method_id": f"m{i}", "normalized": 0.6, "mean": 0.40})
        rows.append({"variant": "sam", "method": f"m{i}", "method_id": f"m{i}", "normalized": ns, "mean": ab})
    rows.append({"variant": "plain", "method": "individual", "method_id": None, "normalized": 1.0, "mean": 0.6})
    return pd.DataFrame(rows)


def test_sentence_states_both_comparisons():
    text = paper_sentence(_frame([0.62, 0.61, 0.59], [0.39, 0.38, 0.37]))
    assert text.startswith("SAM fine-tuning keeps more of its own accuracy when merged for most methods")
    assert "higher for 2 of 3 methods" in text
    assert "**not** higher for most methods: 0 of 3" in text


def test_sentence_when_sam_loses_everywhere():
    text = paper_sentence(_frame([0.5, 0.5], [0.3, 0.3]))
    assert "does **not** keep more" in text and "higher for 0 of 2" in text
    assert paper_sentence(_frame([0.5], [0.3])[lambda f: f["variant"] == "plain"]) == ""
