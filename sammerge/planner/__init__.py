"""The merge planner: which of a zoo's task models can share one set of weights, measured (every pair, every subset
up to 8 tasks), and the fewest groups that keep every task within a tolerance (:mod:`compat`, :mod:`plan`,
:mod:`report`)."""
