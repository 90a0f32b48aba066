"""Safe loading: nothing in a checkpoint file runs; refusals say why and how to convert; size limit; CUDA → CPU."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from sammerge.errors import CheckpointError
from sammerge.io import MAX_BYTES_ENV, load_torch_file


class _RunsCode:
    """Unpickling this calls ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_pickle_that_would_create_a_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(os.system, f"touch {marker}")}, path)
    with pytest.raises(CheckpointError, match=r"refused — loading it would call posix.system"):
        load_torch_file(path)
    assert not marker.exists()


def test_unknown_callable_becomes_inert(tmp_path):
    """A callable outside the refused modules is replaced by an inert stand-in: called, it does nothing."""
    marker = tmp_path / "made_by_pathlib_free_function"
    path = tmp_path / "sneaky.pt"
    import shelve  # shelve.open(marker) would create the file
    torch.save({"weight": torch.ones(2), "payload": _RunsCode(shelve.open, str(marker))}, path)
    obj = load_torch_file(path)
    assert torch.equal(obj["weight"], torch.ones(2))
    assert type(obj["payload"]).__qualified_name__ == "shelve.open"
    assert not any(p.name.startswith(marker.name) for p in tmp_path.iterdir())


def test_raw_pickle_and_legacy_torch_files_are_refused_with_the_conversion_hint(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_RunsCode(os.system, f"touch {marker}")))
    legacy = tmp_path / "legacy.pt"
    torch.save({"weight": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    for path in (raw, legacy):
        with pytest.raises(CheckpointError, match="never unpickles.*weights_only=False.*save_file"):
            load_torch_file(path)
    assert not marker.exists()


def test_size_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.pt"
    torch.save({"weight": torch.zeros(1000)}, path)
    monkeypatch.setenv(MAX_BYTES_ENV, "1000")
    with pytest.raises(CheckpointError, match=r"over the size limit .*SAMMERGE_MAX_FILE_BYTES"):
        load_torch_file(path)
    monkeypatch.setenv(MAX_BYTES_ENV, str(10 ** 9))
    assert load_torch_file(path)["weight"].shape == (1000,)


def test_pickled_module_loads_without_its_code_in_a_fresh_process(tmp_path):
    """A whole pickled module whose class lives in a package the loading process cannot even import."""
    code = tmp_path / "code"
    (code / "mypkg").mkdir(parents=True)
    (code / "mypkg" / "__init__.py").write_text(textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(3, 2)
                self.register_buffer("stat", torch.arange(2.0))
                self.register_buffer("scratch", torch.zeros(1), persistent=False)
            def __setstate__(self, state):
                open(state["_marker"], "w").close()
                super().__setstate__(state)
    """))
    writer = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(code)!r})
        import mypkg
        net = mypkg.Net(); net._marker = {str(tmp_path / 'setstate_ran')!r}
        torch.manual_seed(0); torch.nn.init.normal_(net.fc.weight)
        torch.save(net, {str(tmp_path / 'net.pt')!r})
        torch.save(net.state_dict(), {str(tmp_path / 'reference.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", writer], check=True)
    from sammerge.importing.pickled import class_name, module_state_dict
    obj = load_torch_file(tmp_path / "net.pt")
    assert class_name(obj) == "mypkg.Net" and "mypkg" not in sys.modules
    state = module_state_dict(obj)
    reference = torch.load(tmp_path / "reference.pt", weights_only=True)
    assert set(state) == {"fc.weight", "fc.bias", "stat"} == set(reference)
    for key in reference:
        assert torch.equal(state[key], reference[key])
    assert not (tmp_path / "setstate_ran").exists()


def test_truncated_safetensors_is_named_as_such(tmp_path):
    from safetensors.torch import save_file
    from sammerge.importing.formats import read_file
    save_file({"weight": torch.randn(64, 64)}, str(tmp_path / "full.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "full.safetensors").read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"cut.safetensors: not a valid safetensors file"):
        read_file(tmp_path / "cut.safetensors")


def test_cuda_saved_file_loads_on_cpu(tmp_path):
    from test_import_timm import _cuda_tagged_save
    _cuda_tagged_save({"weight": torch.arange(4.0)}, tmp_path / "gpu.pt")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            torch.load(tmp_path / "gpu.pt", weights_only=True)  # the plain call fails on a CPU-only machine
    obj = load_torch_file(tmp_path / "gpu.pt")
    assert obj["weight"].device.type == "cpu" and torch.equal(obj["weight"], torch.arange(4.0))
