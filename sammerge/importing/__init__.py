"""Bring your own checkpoints: ``sammerge zoo import`` (timm, task_vectors / SAFT-Merge, FusionBench HF CLIP)."""
from sammerge.importing.convert import check_state, import_zoo
from sammerge.importing.spec import ImportSpec, load_import_spec, parse_import_spec

__all__ = ["ImportSpec", "load_import_spec", "parse_import_spec", "import_zoo", "check_state"]
