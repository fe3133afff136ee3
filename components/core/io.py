"""Crash-safe file writes and table I/O (Parquet, JSONL, CSV).

Every output is written to a temporary file in the same folder and renamed into place, so a
stage killed mid-write leaves either the old file or the new one, never a torn one.
"""
from __future__ import annotations

import contextlib
import json
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from components.core.errors import UserError

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


class DataFileError(UserError, ValueError):
    """A data file cannot be read as a table; the message names the file and the reason."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def dir_digest(folder: str | Path) -> str:
    """sha256 over the names and bytes of every file below ``folder`` (sorted)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (the format comes from ``path``'s suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_table(path: str | Path, df: pd.DataFrame) -> Path:
    """Write a DataFrame by suffix (.parquet or .jsonl), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif path.suffix == ".jsonl":
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            raise DataFileError(f"{path}: write .parquet or .jsonl, not {path.suffix!r}.")
    return path


def read_table(path: str | Path, types: Mapping[str, type] | None = None) -> pd.DataFrame:
    """Read a table by suffix with a readable error for missing, empty or malformed files.

    ``types`` maps column names to ``str`` or ``float`` (the schema of the table): the same
    columns come back with the same types whatever the format. CSV holds only text, so every CSV
    column is read as ``str`` (an empty cell is ``""``) and ``float`` columns are then parsed;
    JSON and Parquet keep their own types and only ``float`` columns are parsed (numeric strings
    become numbers). Empty cells and nulls of a ``float`` column become NaN; values that are not
    numbers are kept as they are, so a type check can name them.
    """
    df = _read_table(Path(path))
    for col, kind in (types or {}).items():
        if kind is float and col in df.columns:
            df[col] = _as_float(df[col])
    return df


def _as_float(col: pd.Series) -> pd.Series:
    """Parse a column as float; any value that is not a number keeps its original form."""
    if pd.api.types.is_float_dtype(col.dtype):
        return col
    if pd.api.types.is_integer_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        return col.astype(float)
    values = [_float_or_raw(v) for v in col.tolist()]
    if all(isinstance(v, float) for v in values):
        return pd.Series(values, index=col.index, dtype=float, name=col.name)
    return pd.Series(values, index=col.index, dtype=object, name=col.name)


def _float_or_raw(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
        return value  # True is an int in Python, not a number here; lists, dicts… stay for the type check
    if isinstance(value, str) and not value.strip():
        return float("nan")
    try:
        return float(value)
    except (ValueError, OverflowError):
        return value


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataFileError(f"{path}: file not found.")
    if path.suffix not in TABLE_SUFFIXES:
        raise DataFileError(f"{path}: unsupported format {path.suffix!r}; use one of {TABLE_SUFFIXES}.")
    if path.stat().st_size == 0:
        raise DataFileError(f"{path}: file is empty.")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        return _read_json_records(path)
    except DataFileError:
        raise
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start}).") from exc
    except Exception as exc:  # pyarrow/pandas raise many types; report them uniformly
        raise DataFileError(f"{path}: cannot be read as {path.suffix[1:]}: {exc}") from exc


def _read_json_records(path: Path) -> pd.DataFrame:
    """JSONL (one object per line) or a JSON array of objects."""
    text = path.read_bytes().decode("utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise DataFileError(f"{path}: expected a JSON array of records.")
        records = data
    else:
        records = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path}:{n}: invalid JSON ({exc.msg}).") from exc
    if not records:
        raise DataFileError(f"{path}: holds no records.")
    bad = [i for i, r in enumerate(records, start=1) if not isinstance(r, dict)]
    if bad:
        raise DataFileError(f"{path}: record(s) {bad[:5]} are not JSON objects.")
    return pd.DataFrame.from_records(records)
