"""Data contracts and sources: records, packaged prompt sources, templated traces, GX expectations."""
