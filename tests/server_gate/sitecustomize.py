"""Test-only: loaded by a Streamlit server started with PYTHONPATH=tests/server_gate (tests/test_browser_estimate.py).

The explorer's background refinement (its first item, the references, on the "sammerge-prefetch" thread) waits until
the file named by $SAMMERGE_TEST_REFINE_GATE exists, so a browser test sees the estimate state for sure however fast
the refinement would be; the test creates the file once it has seen the estimate. The same gate as the AppTest's
`gate` fixture (tests/test_estimate_explorer.py), across a process boundary.
"""
import os
import threading
import time
from pathlib import Path

_GATE = os.environ.get("SAMMERGE_TEST_REFINE_GATE")

if _GATE:
    from sammerge.explorer.service import Explorer

    _references = Explorer.references

    def _gated_references(self):
        if threading.current_thread().name == "sammerge-prefetch":
            deadline = time.monotonic() + 300
            while not Path(_GATE).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return _references(self)

    Explorer.references = _gated_references
