"""Analyses over several pipeline runs (a seed sweep): the seed spread, paired tests across prompts and seeds.

Not a dependency of any DVC stage (as ``components/registry`` is not), so changing it re-runs
nothing."""
