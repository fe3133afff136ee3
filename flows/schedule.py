"""Scheduled retraining: serve the pipeline flow as a cron deployment.

``flow.serve(cron=…)`` needs a Prefect API with a scheduler (the ephemeral API has none). With
``PREFECT_API_URL`` set (a remote server or Prefect Cloud) that one is used; otherwise a local
``prefect server`` is started on 127.0.0.1 and stopped on exit. DVC decides what each scheduled
run re-executes, so retraining after a dataset change re-runs only what changed.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_server(port: int | None = None, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """A ``prefect server`` bound to loopback; returns the process and its API URL."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env={**os.environ, "PREFECT_API_URL": ""})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1)
        if proc.poll() is not None:
            raise RuntimeError("prefect server exited during start-up; see `prefect server start` output.")
    proc.terminate()
    raise RuntimeError(f"prefect server did not answer on {url} within {timeout:.0f}s.")


def serve(workspace: str, cron: str, stages: list[str] | None, name: str) -> int:
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        server, url = start_local_server()
        os.environ["PREFECT_API_URL"] = url
        print(f"started a local Prefect server at {url} (UI: {url[:-4]})")
    from flows.pipeline import pipeline

    try:
        print(f"serving deployment craft-pipeline/{name} on cron '{cron}'; Ctrl-C to stop")
        pipeline.serve(name=name, cron=cron, parameters={"workspace": str(Path(workspace).resolve()), "stages": stages})
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return 0
