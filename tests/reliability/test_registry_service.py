"""Registry commands against a tracking server that is down, half up, or behind credentials.

Every command that talks to MLflow must answer in seconds with one line and exit 2 when it cannot
ask (never "no versions" / "no challenger", never a traceback, never a password), must tell "not
found" from "could not ask", and must say "busy" when another registry command holds the lock.
Offline: a tiny HTTP server in a thread stands in for MLflow; an unused local port for "down".
"""
from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.reliability

USER, PASSWORD = "alice", "s3cr3t-pw"
MODEL = "models:/craft-policy/1"
FAST = 20.0
"""Seconds a failing command may take (imports warm; minutes before the fix)."""


@pytest.fixture(autouse=True)
def clean_env():
    """Commands set env defaults (MLflow HTTP retries, workspace): undo them; no global tracking URI."""
    import mlflow

    import flows.cli  # noqa: F401  (imports warm, so timings measure the command)

    saved = dict(os.environ)
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(key, None)
    mlflow.set_tracking_uri(None)
    yield
    mlflow.set_tracking_uri(None)
    os.environ.clear()
    os.environ.update(saved)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeMlflow(BaseHTTPRequestHandler):
    """``/health`` answers 200; the API answers as ``api`` says: 503, JSON not-found, or HTML 404."""

    api = "503"
    seen: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.path.rstrip("/") == "/health":
            return self._send(200, "OK", "text/plain")
        if self.api == "not-found":
            body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST",
                               "message": "Registered Model with name=craft-policy not found"})
            return self._send(404, body, "application/json")
        if self.api == "html-404":
            return self._send(404, "<html>no such page</html>", "text/html")
        return self._send(503, "<html>service unavailable</html>", "text/html")

    do_POST = do_PATCH = do_DELETE = do_GET  # noqa: N815

    def _send(self, status: int, body: str, kind: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture()
def server():
    """A live HTTP server on 127.0.0.1; yields a function setting its API behaviour → its port."""
    handler = type("Handler", (FakeMlflow,), {"seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def start(api: str = "503"):
        handler.api = api
        return httpd.server_address[1], handler.seen

    yield start
    httpd.shutdown()
    httpd.server_close()


def craft(argv, capsys):
    """Run the CLI in-process: (exit code, stdout, stderr lines, seconds)."""
    from flows.cli import main

    capsys.readouterr()
    t0 = time.monotonic()
    code = main(argv)
    seconds = time.monotonic() - t0
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()], seconds


def commands(ws):
    """Every registry command (argv), the audit of a registered model included."""
    return {"models": ["models", "--workspace", str(ws)],
            "promote": ["promote", "--workspace", str(ws)],
            "rollback": ["rollback", "--workspace", str(ws)],
            "register": ["register", "--workspace", str(ws)],
            "audit": ["audit", "hello", "--model", MODEL, "--params", str(ws / "none.yaml"), "--out", str(ws / "a")]}


def assert_one_clean_line(code, err, seconds, *, needle: str):
    assert code == 2, err
    assert len(err) == 1, err
    line = err[0]
    assert "Traceback" not in line and PASSWORD not in line and USER not in line, line
    assert needle in line, line
    assert seconds < FAST, f"took {seconds:.0f}s"


@pytest.mark.parametrize("name", ["models", "promote", "rollback", "register", "audit"])
def test_down_server_is_one_line_exit_2_in_seconds(name, tmp_path, monkeypatch, capsys):
    port = unused_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{PASSWORD}@127.0.0.1:{port}")
    code, out, err, seconds = craft(commands(tmp_path)[name], capsys)
    assert_one_clean_line(code, err, seconds, needle=f"at http://***@127.0.0.1:{port}/health is unreachable")
    assert "no versions" not in out


@pytest.mark.parametrize("name", ["models", "promote", "rollback", "audit"])
def test_server_up_but_api_failing_is_not_taken_for_absence(name, tmp_path, monkeypatch, capsys, server):
    """/health answers (with credentials sent as basic auth) but every API call fails with 503:
    MLflow's retries are short and the failure is one line, never "no versions"/"no challenger"."""
    port, seen = server("503")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{USER}:{PASSWORD}@127.0.0.1:{port}")
    code, out, err, seconds = craft(commands(tmp_path)[name], capsys)
    assert_one_clean_line(code, err, seconds, needle=f"http://***@127.0.0.1:{port}")
    assert "no versions" not in out and "no 'challenger'" not in err[0] and "no champion" not in err[0]
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    health = [auth for path, auth in seen if path.rstrip("/") == "/health"]
    assert health and all(auth == expected for auth in health)  # basic auth, not userinfo in the URL
    assert any(path.startswith("/api/") for path, _ in seen)  # it did ask, and the asking failed


def test_not_found_is_an_answer_but_a_missing_endpoint_is_not(tmp_path, monkeypatch, capsys, server):
    port, _ = server("not-found")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    code, out, err, _ = craft(commands(tmp_path)["models"], capsys)
    assert code == 0 and "no versions of craft-policy registered yet" in out and not err
    code, _, err, _ = craft(commands(tmp_path)["promote"], capsys)
    assert code == 2 and len(err) == 1 and "no 'challenger' version" in err[0]

    server("html-404")  # a server that is not MLflow (wrong URI): not "no versions"
    code, out, err, _ = craft(commands(tmp_path)["models"], capsys)
    assert code == 2 and "no versions" not in out and len(err) == 1 and "ENDPOINT_NOT_FOUND" in err[0]


def test_reachability_check_sends_userinfo_as_basic_auth_and_redacts(server):
    from components.core.errors import ServiceUnavailable
    from components.core.tracking import redact, require_reachable

    port, seen = server()
    require_reachable(f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/health", "MLflow", "MLFLOW_TRACKING_URI")
    assert seen == [("/health", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())]
    down = unused_port()
    with pytest.raises(ServiceUnavailable) as err:
        require_reachable(f"https://{USER}:{PASSWORD}@127.0.0.1:{down}/health", "MLflow", "MLFLOW_TRACKING_URI",
                          timeout=2)
    assert PASSWORD not in str(err.value) and f"https://***@127.0.0.1:{down}/health" in str(err.value)
    assert redact("API request to http://u:p%40ss@h:5000/api failed") == "API request to http://***@h:5000/api failed"
    assert redact("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"


def test_second_registry_command_is_busy_in_one_line(tmp_path, monkeypatch, capsys):
    import mlflow

    from components.registry import promote

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CRAFT_REGISTRY_LOCK_TIMEOUT", "0.2")
    with promote.registry_lock():  # another registry command is running
        code, _, err, seconds = craft(commands(tmp_path)["promote"], capsys)
    mlflow.set_tracking_uri(None)
    assert code == 2 and len(err) == 1, err
    assert "another registry command" in err[0] and "Traceback" not in err[0] and seconds < FAST
