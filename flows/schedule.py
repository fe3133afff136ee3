"""Scheduled retraining: serve the pipeline flow as a cron deployment (``craft schedule``).

``flow.serve(…)`` needs a Prefect API with a scheduler (the ephemeral API has none). With
``PREFECT_API_URL`` set (a remote server or Prefect Cloud) that one is used; otherwise a local
``prefect server`` is started on 127.0.0.1 and stopped on exit. DVC decides what each scheduled
run re-executes, so retraining after a dataset change re-runs only what changed. The cron
expression is read in ``ScheduleConfig.timezone`` (Prefect's default, UTC, unless told), and the
deployment's concurrency limit queues or skips a run that falls due while another still holds the
workspace, instead of letting it fail on the workspace lock. ``prefect.yaml`` deploys the same
flow to a work pool instead (docs/deployment.md).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from components.core.errors import ServiceUnavailable, UserError

OVERLAP = {"queue": "ENQUEUE", "skip": "CANCEL_NEW"}
"""``--overlap`` → Prefect's collision strategy for a run due while ``limit`` runs are active."""


@dataclass(frozen=True)
class ScheduleConfig:
    """When the served deployment runs and how many of its runs may run at once."""

    cron: str
    """Five-field cron expression (minute hour day-of-month month day-of-week), e.g. "0 3 * * 0"."""
    timezone: str = "UTC"
    """IANA time zone the cron expression is read in (daylight-saving shifts follow it)."""
    limit: int = 1
    """Most runs of the deployment at once; 1, because a second run of one workspace fails on its lock."""
    overlap: str = "queue"
    """A run due while ``limit`` runs are active: ``queue`` (starts when one ends) or ``skip`` (cancelled)."""

    def __post_init__(self):
        import zoneinfo

        # Prefect validates time zones against this same set (prefect.types._datetime.get_timezones).
        if self.timezone not in zoneinfo.available_timezones():
            raise UserError(f"--timezone {self.timezone!r} is not an IANA time zone name; give one such as UTC, "
                            "Europe/Berlin or America/New_York (`python -c \"import zoneinfo; "
                            "print(sorted(zoneinfo.available_timezones()))\"` lists them).")
        if self.limit < 1:
            raise UserError(f"--limit {self.limit}: give 1 or more (how many runs of the deployment may run at once).")
        if self.overlap not in OVERLAP:
            raise UserError(f"--overlap {self.overlap!r}: give one of {sorted(OVERLAP)}.")
        self.cron_schedule()  # a bad cron expression: one line now, not a trace from the server later

    def cron_schedule(self):
        """Prefect's ``CronSchedule`` for this config."""
        from pydantic import ValidationError
        from prefect.client.schemas.schedules import CronSchedule

        try:
            return CronSchedule(cron=self.cron, timezone=self.timezone)
        except ValidationError:
            raise UserError(f"--cron {self.cron!r} is not a cron expression Prefect accepts; give five fields, "
                            'minute hour day-of-month month day-of-week, e.g. "0 3 * * 0" (Sundays 03:00).') from None

    def concurrency(self):
        """The deployment's concurrency limit: at most ``limit`` runs, the rest queued or skipped."""
        from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

        strategy = ConcurrencyLimitStrategy(OVERLAP[self.overlap])
        return ConcurrencyLimitConfig(limit=self.limit, collision_strategy=strategy)


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
            raise ServiceUnavailable("prefect server exited during start-up; "
                                     "run `prefect server start` to see why.")
    proc.terminate()
    raise ServiceUnavailable(f"prefect server did not answer on {url} within {timeout:.0f}s; "
                             "run `prefect server start` to see why.")


def serve(workspace: str, cfg: ScheduleConfig, stages: list[str] | None, name: str) -> int:
    """Serve the pipeline on ``cfg``'s schedule until interrupted (the runner executes the runs)."""
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        server, url = start_local_server()
        os.environ["PREFECT_API_URL"] = url
        print(f"started a local Prefect server at {url} (UI: {url[:-4]})")
    from flows.deployment import scheduled_pipeline

    try:
        print(f"serving deployment craft-pipeline/{name} on cron '{cfg.cron}' ({cfg.timezone}); at most {cfg.limit} "
              f"run(s) at once, a run due meanwhile is {'queued' if cfg.overlap == 'queue' else 'skipped'}; "
              "Ctrl-C to stop")
        # The deployment-wide limit (global_limit) is enforced by the server for every runner and
        # worker of this deployment; the runner's own process limit stays at Prefect's default so
        # that a run due meanwhile reaches the server and is queued or skipped there.
        scheduled_pipeline.serve(name=name, schedules=[cfg.cron_schedule()], global_limit=cfg.concurrency(),
                                 parameters={"workspace": str(Path(workspace).resolve()), "stages": stages})
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    return 0
