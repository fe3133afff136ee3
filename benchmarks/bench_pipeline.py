"""End-to-end wall time of the latest default pipeline run, by stage, from its MLflow runs.

    craft run --force && python benchmarks/bench_pipeline.py

Reads the newest ``pipeline`` parent run in ./mlruns and its child runs' start/end times.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402


def main() -> None:
    from mlflow import MlflowClient

    from components.core import env

    env.configure(".")
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("craft")
    parents = client.search_runs([exp.experiment_id], "tags.`craft.stage` = 'pipeline'", order_by=["start_time DESC"])
    done = [p for p in parents if p.info.end_time]
    if not done:
        sys.exit("no finished pipeline run in ./mlruns: run `craft run` first.")
    parent = done[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  order_by=["start_time ASC"])
    rows = [{"stage": c.info.run_name, "seconds": (c.info.end_time - c.info.start_time) / 1000} for c in children if c.info.end_time]
    total = (parent.info.end_time - parent.info.start_time) / 1000
    rows.append({"stage": "total (incl. orchestration)", "seconds": total})
    common.print_rows(f"pipeline wall time by stage ({common.device_name()}), run {parent.info.run_id}", rows)
    print(f"saved {common.save('pipeline', rows, {'run_id': parent.info.run_id, 'command': ' '.join(sys.argv)})}")


if __name__ == "__main__":
    main()
