"""Analyses over several pipeline runs (a seed sweep): paired tests across prompts and seeds.

Not a dependency of any DVC stage (as ``components/registry`` is not), so changing it re-runs
nothing."""
