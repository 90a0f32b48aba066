"""Opening zoos in the app: only directories under the roots the server is configured with; provenance display.

Roots: every entry of ``$SAMMERGE_ZOO_ROOTS`` (``os.pathsep``-separated), the directory ``$SAMMERGE_ZOO`` names
(set by whoever starts the server) and the built-in zoo cache (``$SAMMERGE_HOME/zoos``). A path typed in the
browser is refused if it has a ``..`` component or if, with symbolic links resolved, it lies outside every root.
"""
from __future__ import annotations

import os
from pathlib import Path

from sammerge.errors import ZooError

ROOTS_ENV = "SAMMERGE_ZOO_ROOTS"


def allowed_roots() -> list[Path]:
    """The configured roots, resolved, without duplicates (read on every call)."""
    from sammerge.training.build import default_zoo_dir

    raw = [p for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    if os.environ.get("SAMMERGE_ZOO"):
        raw.append(os.environ["SAMMERGE_ZOO"])
    raw.append(str(default_zoo_dir()))
    roots: list[Path] = []
    for entry in raw:
        root = Path(entry).expanduser().resolve()
        if root not in roots:
            roots.append(root)
    return roots


def resolve_zoo_dir(path: str | os.PathLike, roots: list[Path] | None = None) -> Path:
    """``path`` resolved, if it is one of the roots or inside one; ZooError otherwise (nothing is opened)."""
    roots = allowed_roots() if roots is None else roots
    text = str(path).strip()
    if not text:
        raise ZooError("no zoo directory given")
    if ".." in Path(text).parts:
        raise ZooError(f"{text}: '..' is not allowed in a zoo path")
    resolved = Path(text).expanduser().resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        raise ZooError(f"{text}: outside the directories this server opens zoos from ({shown}); "
                       f"the server's ${ROOTS_ENV} sets them")
    return resolved


def find_zoos(roots: list[Path] | None = None, max_depth: int = 2) -> list[Path]:
    """Directories holding a zoo.json at most ``max_depth`` levels below each root (sorted, no duplicates)."""
    found: list[Path] = []
    for root in allowed_roots() if roots is None else roots:
        if not root.is_dir():
            continue
        level = [root]
        for _ in range(max_depth + 1):
            nxt = []
            for d in level:
                if (d / "zoo.json").is_file() and d not in found:
                    found.append(d)
                try:
                    nxt += [c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")]
                except OSError:
                    continue
            level = nxt
    return sorted(found)


def directory_input(state, remember) -> None:
    """Sidebar widgets: a choice among the zoos found under the roots, and a path field (checked on open)."""
    import streamlit as st

    zoos = [str(z) for z in find_zoos()]
    if zoos:
        def pick() -> None:
            state.zoo_dir = state.zoo_found
            remember()
        current = state.get("zoo_dir", "")
        st.selectbox("Zoos on this server", zoos, index=zoos.index(current) if current in zoos else None,
                     key="zoo_found", on_change=pick, placeholder="choose a zoo",
                     help="Zoos found under the server's zoo roots ($SAMMERGE_ZOO_ROOTS), built or imported.")
    st.text_input("Zoo directory", key="zoo_dir", placeholder="/path/to/zoo", on_change=remember,
                  help="A zoo directory (zoo.json …) under one of the server's zoo roots: "
                       + ", ".join(str(r) for r in allowed_roots()))


def provenance_table(zoo):
    """The Zoo page's provenance table of an imported zoo (hashes shortened for display)."""
    import pandas as pd
    from sammerge.zoo import provenance_rows
    frame = pd.DataFrame(provenance_rows(zoo))
    for col in ("original sha256", "zoo sha256"):
        frame[col] = frame[col].str.slice(0, 16) + "…"
    return frame
