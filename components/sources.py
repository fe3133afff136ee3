"""Stage ``sources``: a manifest of the prompt files ``ingest`` reads, so DVC sees new data.

The packaged prompt sets live inside installed wheels (outside the repository) and a user's
``file:PATH`` source may live anywhere, so neither can be a dvc.yaml dep by path. This stage
(``always_changed`` in dvc.yaml, a second or less) hashes every file ``ingest.sources`` names
into ``data/sources/manifest.json``; ``ingest`` depends on that file. An upgraded data wheel or
an edited prompt file changes the manifest and re-runs ingest and everything after it; an
unchanged manifest keeps the rest of the pipeline cached. No MLflow run: it records no result.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from pathlib import Path

from components.core import stage_cli
from components.core.config import ConfigError
from components.core.io import write_json
from components.data.sources import DEFAULT_SOURCES, FILES, package_dir, source_files

log = logging.getLogger("craft.sources")
STAGE = "sources"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry(name: str, path: Path) -> dict:
    """Packaged files are named relative to their package (machine-independent); user files as given."""
    if name in FILES:
        package = FILES[name][0]
        return {"package": package, "version": importlib.metadata.version(package),
                "file": path.relative_to(package_dir(package)).as_posix(), "sha256": _sha256(path)}
    return {"file": str(path), "sha256": _sha256(path)}


def manifest(names: tuple[str, ...]) -> dict:
    """``{source: [{package, version, file, sha256}, …]}`` for every configured source."""
    return {name: [_entry(name, p) for p in source_files(name)] for name in names}


def main(argv: list[str] | None = None) -> int:
    args, params = stage_cli.parse(STAGE, __doc__, argv, [
        ("--out", True, "output folder (data/sources)"),
    ])
    names = (params.get("ingest") or {}).get("sources", DEFAULT_SOURCES)
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(f"params.yaml:ingest.sources={names!r}: give a non-empty list of source names.")
    found = manifest(tuple(names))
    write_json(Path(args.out) / "manifest.json", found)
    log.info("%d source(s), %d file(s)", len(found), sum(len(v) for v in found.values()))
    return 0


if __name__ == "__main__":
    from components.core.errors import guarded

    raise SystemExit(guarded(STAGE, main))
