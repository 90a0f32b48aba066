"""The merge methods of 2024–2025, one module each; importing this package registers every one of them.

A new method is one file here with its ``@merge_method`` / ``@merge_direction`` registration: every module of this
package (names not starting with ``_``) is imported below, nothing else needs an edit.
"""
import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
