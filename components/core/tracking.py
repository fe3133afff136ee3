"""MLflow tracking shared by every stage: one child run per stage under the pipeline's run.

The pipeline flow opens the parent run and passes its id in ``CRAFT_PARENT_RUN_ID``; a stage run
by hand (``dvc repro validate``) gets a standalone run. Tracking URI and artifact root live in
the workspace (``sqlite:///mlruns/mlflow.db``, ``mlruns/artifacts``) unless the user points
``MLFLOW_TRACKING_URI`` at a server.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

EXPERIMENT = "craft"
PARENT_ENV = "CRAFT_PARENT_RUN_ID"
FLOW_RUN_ENV = "CRAFT_FLOW_RUN_ID"
"""The Prefect flow run a stage belongs to (tagged on its MLflow run as ``prefect.flow_run_id``)."""


def experiment_id() -> str:
    """Create (once) and return the project's experiment, artifacts under ``mlruns/artifacts``."""
    import mlflow

    name = os.environ.get("CRAFT_EXPERIMENT", EXPERIMENT)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    location = None
    if uri.startswith("sqlite:///"):
        root = Path(uri[len("sqlite:///"):]).parent
        location = (root / "artifacts").resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it first
        return mlflow.get_experiment_by_name(name).experiment_id


def ensure_store() -> None:
    """Make the folder of a local sqlite DB; for a tracking server, fail fast with one clear line."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        require_reachable(uri.rstrip("/") + "/health", "MLflow tracking server", "MLFLOW_TRACKING_URI",
                          auth=(user, password) if user and password else None)


_USERINFO = re.compile(r"""(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^\s'"<>]*@""")
"""Up to the last ``@`` of a URI: a password with a raw ``/`` or ``@`` is hidden too (an ``@`` in a
path or query hides a little more than needed)."""


def redact(text: object) -> str:
    """``text`` (a URI, or a message holding URIs) with the userinfo of every URI replaced by ``***``:
    ``http://user:password@host/`` → ``http://***@host/``. Use it on every URI that is printed or logged."""
    return _USERINFO.sub(r"\g<scheme>***@", str(text))


def require_reachable(url: str, what: str, variable: str, timeout: float = 5.0,
                      auth: tuple[str, str] | None = None) -> None:
    """Raise ServiceUnavailable unless ``url`` answers (any HTTP status counts as up).

    Userinfo in ``url`` (``http://user:password@host``), or else ``auth``, is sent as HTTP basic
    auth, never left in the URL; messages show the URL redacted."""
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request

    from components.core.errors import ServiceUnavailable

    parts = urllib.parse.urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, _, password = userinfo.partition(":")
        auth = (urllib.parse.unquote(user), urllib.parse.unquote(password))
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
    try:
        request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=hostport)), headers=headers)
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        raise ServiceUnavailable(f"{what} at {redact(url)} is unreachable ({redact(getattr(exc, 'reason', exc))}); "
                                 f"start it or point {variable} elsewhere (unset it to use the local store).") from None


FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
"""MLflow's own HTTP retries for interactive commands (its defaults: 7 retries, backoff factor 2,
timeout 120 s, which is minutes of waiting before a failure is reported); 2 retries, factor 1 and
20 s per request here. Values the user set win."""


def fail_fast_http() -> None:
    """Cut MLflow's HTTP retries short for this process (see ``FAST_HTTP``)."""
    for key, value in FAST_HTTP.items():
        os.environ.setdefault(key, value)


NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_NO_ANSWER = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "ENDPOINT_NOT_FOUND",
              "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "NOT_IMPLEMENTED", "INVALID_STATE", "DATA_LOSS"}


def is_not_found(exc: BaseException) -> bool:
    """Whether an MLflow error says the thing asked for does not exist (not that asking failed)."""
    return getattr(exc, "error_code", None) == NOT_FOUND


@contextlib.contextmanager
def mlflow_errors(doing: str, not_found: str | None = None) -> Iterator[None]:
    """Turn MLflow failures inside into one-line user errors naming what could not be done.

    ``ServiceUnavailable`` when the store did not answer usefully (connection, timeout, 5xx, no such
    endpoint), ``UserError`` when it refused (bad request, no permission); the URI is redacted. A
    RESOURCE_DOES_NOT_EXIST ("not found", an answer) passes through unchanged for the caller to
    interpret, unless ``not_found`` gives the message of the UserError to raise instead."""
    import requests
    from mlflow.exceptions import MlflowException

    from components.core.errors import ServiceUnavailable, UserError

    try:
        yield
    except MlflowException as exc:
        if is_not_found(exc):
            if not_found is None:
                raise
            raise UserError(not_found) from None
        code = str(getattr(exc, "error_code", "") or "")
        cls = ServiceUnavailable if code in _NO_ANSWER else UserError
        raise cls(_failure(doing, code, exc.message)) from None
    except requests.RequestException as exc:
        raise ServiceUnavailable(_failure(doing, "", exc)) from None


def _failure(doing: str, code: str, detail: object) -> str:
    import mlflow

    lines = [line.strip() for line in redact(detail).splitlines() if line.strip()] or ["no details"]
    db_errors = [line for line in lines if line.startswith("(sqlite3.")]  # e.g. "(sqlite3.OperationalError) disk I/O error"
    text = (db_errors or lines)[0]
    text = text if len(text) <= 300 else text[:300] + "…"
    uri = mlflow.get_tracking_uri()
    advice = ("Check that its disk has space and is writable, then retry." if uri.startswith("sqlite:") else
              "Check that the server is up and the URI and credentials are right (MLFLOW_TRACKING_URI), then retry.")
    return (f"could not {doing}: the MLflow tracking store at {redact(uri)} failed"
            f"{f' ({code})' if code else ''}: {text}. {advice}")


SECRET_WORDS = ("token", "secret", "password", "passwd", "api_key", "apikey", "credential", "auth")


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a dataclass or nested mapping into ``a.b.c -> str`` params; secrets are redacted."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    out: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    key = prefix.rstrip(".")
    if any(w in key.lower() for w in SECRET_WORDS):
        return {key: "***"}
    return {key: str(obj)[:500]}


def owner_tags() -> dict[str, str]:
    """Tags naming the process that owns a run, so a later start can tell it died."""
    import socket

    from components.core.lifecycle import process_token

    flow_run = os.environ.get(FLOW_RUN_ENV)
    return {"craft.host": socket.gethostname(), "craft.process": process_token(),
            **({"prefect.flow_run_id": flow_run} if flow_run else {})}


@contextlib.contextmanager
def killed_on_interrupt() -> Iterator[None]:
    """End the active MLflow run as KILLED when the block is interrupted (Ctrl-C, SIGTERM via
    ``lifecycle.stop_on_sigterm``, Prefect's termination signal); MLflow itself would say FAILED."""
    import mlflow

    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, Exception) and not isinstance(exc, SystemExit) and mlflow.active_run():
            mlflow.set_tag("craft.ended_by", type(exc).__name__)
            mlflow.end_run("KILLED")
        raise


def end_stale_runs() -> list[str]:
    """Mark KILLED the runs of this experiment still RUNNING on this host whose process is gone
    (killed with SIGKILL, or the machine lost power); returns their ids. A run without an owner
    tag, or from another host, is left alone: it may be alive elsewhere."""
    import socket

    import mlflow
    from mlflow.tracking import MlflowClient

    from components.core.lifecycle import token_alive

    running = mlflow.search_runs(experiment_ids=[experiment_id()], output_format="list",
                                 filter_string=f"attributes.status = 'RUNNING' and tags.`craft.host` = '{socket.gethostname()}'")
    client, ended = MlflowClient(), []
    for run in running:
        token = run.data.tags.get("craft.process")
        if token and not token_alive(token):
            client.set_tag(run.info.run_id, "craft.ended_by", "its process died; marked at the next start")
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended


@contextlib.contextmanager
def stage_run(stage: str, *configs: Any, tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """Open the MLflow run of one stage (child of the pipeline run when there is one).

    Runs left RUNNING by dead processes are marked KILLED first; this run ends KILLED if the
    stage is interrupted."""
    import mlflow

    ensure_store()
    parent = os.environ.get(PARENT_ENV) or None
    all_tags = {"craft.stage": stage, **owner_tags(), **(tags or {})}
    with contextlib.ExitStack() as stack:
        with mlflow_errors(f"open the MLflow run of {stage}"):  # e.g. the store's disk is full
            end_stale_runs()
            retry_of = unfinished_child(parent, stage) if parent else None
            start = (dict(run_id=retry_of) if retry_of else
                     dict(experiment_id=experiment_id(), run_name=stage, parent_run_id=parent))
            run = stack.enter_context(mlflow.start_run(**start, tags=all_tags))
        stack.enter_context(killed_on_interrupt())
        params: dict[str, str] = {}
        for cfg in configs:
            params.update(flatten(cfg, f"{type(cfg).__name__}."))
        if params and not retry_of:
            mlflow.log_params(params)
        yield run


def unfinished_child(parent_run_id: str, stage: str) -> str | None:
    """The run of ``stage`` under this parent that did not finish (a retried task reuses it, so a
    retry never leaves two runs of one stage in one pipeline run)."""
    import mlflow

    found = mlflow.search_runs(
        experiment_ids=[experiment_id()], output_format="list",
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`craft.stage` = '{stage}'")
    pending = [r for r in found if r.info.status != "FINISHED"]
    return pending[0].info.run_id if pending else None


def log_stage_outputs(prefix: str, metrics: Mapping[str, Any], artifacts: Iterable[str | Path] = ()) -> None:
    """Log numeric metrics as ``<prefix>/<name>`` and files to the active run."""
    import mlflow

    numeric = {f"{prefix}/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        mlflow.log_metrics(numeric)
    for path in artifacts:
        if Path(path).exists():
            mlflow.log_artifact(str(path))


def log_folder_run(name: str, folder: str | Path, artifact_path: str | None = None) -> str:
    """A standalone run (tag ``craft.stage=name``) holding every file of ``folder`` under
    ``artifact_path``; for one-off commands such as ``craft audit``. Returns the run id."""
    import mlflow

    ensure_store()
    with mlflow.start_run(experiment_id=experiment_id(), run_name=name,
                          tags={"craft.stage": name, **owner_tags()}) as run, killed_on_interrupt():
        mlflow.log_artifacts(str(folder), artifact_path)
    return run.info.run_id
