"""Generated downloads outlive other sessions' orphan sweeps for a grace period (real Streamlit file manager)."""
from __future__ import annotations

from streamlit.runtime.media_file_manager import MediaFileManager, MediaFileMetadata
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from sammerge.webapp.downloads import keep_generated_downloads


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def manager_with_generated_file(patch: bool, clock: Clock):
    storage = MemoryMediaFileStorage("/media")
    manager = MediaFileManager(storage)
    if patch:
        assert keep_generated_downloads(manager, grace_s=60, clock=clock)
    file_id = manager.add_deferred(lambda: b"merged config", "application/json", "coord-1", file_name="m.json")
    url = manager.execute_deferred(file_id)
    generated = url.rsplit("/", 1)[-1].split(".")[0]
    assert generated in manager._file_metadata
    return manager, storage, generated


def sweeps(manager, n):  # what the end of n script runs of any sessions does
    for _ in range(n):
        manager.remove_orphaned_files()


def test_unpatched_streamlit_deletes_a_fresh_download_after_two_sweeps():
    # the race this module exists for: the file is gone before a slow browser fetches it
    manager, storage, generated = manager_with_generated_file(False, Clock())
    sweeps(manager, 2)
    assert generated not in manager._file_metadata


def test_generated_download_survives_sweeps_during_grace_then_is_collected():
    clock = Clock()
    manager, storage, generated = manager_with_generated_file(True, clock)
    sweeps(manager, 5)
    assert generated in manager._file_metadata
    assert storage.get_file(generated).content == b"merged config"
    clock.now = 61.0  # past the grace period: the usual mark-then-delete clean-up applies
    sweeps(manager, 2)
    assert generated not in manager._file_metadata
    assert manager._sammerge_grace == {}  # the bookkeeping does not grow


def test_patching_twice_wraps_once_and_other_files_are_still_collected():
    clock = Clock()
    manager, storage, generated = manager_with_generated_file(True, clock)
    assert keep_generated_downloads(manager, grace_s=60, clock=clock)
    kind = manager._file_metadata[generated].kind  # a download file some earlier run registered and dropped
    other = storage.load_and_get_id(b"old", "text/plain", kind, "old.txt")
    manager._file_metadata[other] = MediaFileMetadata(kind=kind)
    sweeps(manager, 2)
    assert other not in manager._file_metadata and generated in manager._file_metadata


def test_a_manager_without_the_expected_internals_is_left_alone():
    class Bare:
        pass
    assert keep_generated_downloads(Bare()) is False
