"""CRAFT pipeline library: pure, framework-free stage logic (no prefect, no dvc imports).

Each stage module exposes ``run(cfg, ...) -> outputs`` plus a thin ``main()`` that DVC calls.
"""
