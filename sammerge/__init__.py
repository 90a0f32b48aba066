"""sammerge: explore model merging of SAM- vs plainly-fine-tuned checkpoints."""
from __future__ import annotations

try:  # installed package
    from importlib.metadata import version as _version

    __version__ = _version("sammerge")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0.1.0"

from sammerge.errors import (  # noqa: E402
    CheckpointError, ConfigError, DataError, MergeError, SammergeError, ZooError,
)

__all__ = ["__version__", "SammergeError", "DataError", "CheckpointError", "ConfigError", "ZooError",
           "MergeError"]
