"""Merging: task vectors, sparsification, the method registry, the methods and the merge spec.

``from sammerge.merging import ...`` is the public surface; importing the package registers every method.
"""
from sammerge.merging.task_vector import (StateDict, TaskVector, apply_task_vector, as_state_dict,  # noqa: F401
                                          check_compatible, check_task_vectors, float_keys, linear_combination,
                                          task_vector)
from sammerge.merging.sparsify import breadcrumbs_mask, dare_drop, trim_magnitude  # noqa: F401
from sammerge.merging.schema import Param, ParamSpec  # noqa: F401
from sammerge.merging.registry import (MERGE_METHODS, Mergekit, MergeMethod, get_method,  # noqa: F401
                                       list_methods, merge_direction, merge_method, table_methods)
from sammerge.merging.learners import CoefficientLearner, coefficient_learner  # noqa: F401
from sammerge.merging import layers  # noqa: F401
from sammerge.merging import methods  # noqa: F401  (registers the methods)
from sammerge.merging import modern  # noqa: F401  (registers the methods of 2024–2025)
from sammerge.merging.methods import (breadcrumbs, dare_linear, dare_ties, model_stock, task_arithmetic,  # noqa: F401
                                      ties, weight_average)
from sammerge.merging.spec import LAMBDA, WEIGHTS, DENSITIES, MergeSpec, TaskEntry, task_id  # noqa: F401,E402
from sammerge.merging.mergekit import (from_mergekit_yaml, is_mergekit_config, load_any_config,  # noqa: F401,E402
                                       to_mergekit_yaml)
from sammerge.merging.apply import merge_zoo, resolve_and_merge  # noqa: F401,E402
from sammerge.merging.statistics import spec_statistics, task_statistics, variant_statistics  # noqa: F401,E402
