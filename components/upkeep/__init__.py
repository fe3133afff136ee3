"""Keeping a workspace in shape between runs: what accumulates outside DVC, and pruning it.

Not a dependency of any DVC stage (as ``components/registry`` and ``components/sweep`` are not),
so changing it re-runs nothing."""
