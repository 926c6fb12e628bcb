"""Talking to Ray's Jobs API: a client whose every request times out and carries the cluster's token, and one
way to tell a cluster that does not answer (wait), one that refuses the token (a setting to fix), one that does
not know a job, and one that refuses a request (mtld.executor.ray.jobs submits and watches the runs)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mtld.executor import ClusterRefused, ClusterUnreachable
from mtld.executor.ray.resources import unsatisfiable
from mtld.executor.ray.settings import EXTRA_HINT, token_file_problem

T = TypeVar("T")
REQUEST_TIMEOUT_S = 10.0  # every call to the Jobs API: a dashboard that hangs must not hang the daemon
TOKEN_SETTING = "executor.ray.token_file"


class JobMissing(LookupError):
    """The cluster answers, and does not know the job (404)."""


def read_token(path: Path) -> str:
    """The token in `path`; ClusterRefused (naming the setting) when the file is missing, empty or not private."""
    problem = token_file_problem(path)
    if problem is None:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, ValueError) as e:
            problem = f"{path}: cannot be read ({e})"
        else:
            if token and "\n" not in token:
                return token
            problem = f"{path} does not hold one token (it is empty, or has several lines)"
    raise ClusterRefused(f"{TOKEN_SETTING} - {problem}")


def client_for(address: str, token_file: Path | None = None) -> Any:
    """A JobSubmissionClient for `address` whose every request times out and carries the token of
    `token_file` (if set). ClusterUnreachable when nothing answers there; ClusterRefused when the cluster
    refuses the token (or wants one)."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:  # settings refuse kind = "ray" without it; this is for doctor and the bench
        raise ClusterUnreachable(f"Ray's client is not installed ({EXTRA_HINT})") from e

    class Client(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            # the SDK passes extra keyword arguments on to requests.request (dashboard_sdk.py)
            kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
            return super()._do_request(method, endpoint, **kwargs)

    # An Authorization header given to the client is sent with every request and wins over Ray's own
    # RAY_AUTH_* variables (dashboard_sdk.py, get_auth_headers_if_auth_enabled: "don't override").
    headers = {"Authorization": f"Bearer {read_token(token_file)}"} if token_file else None
    try:
        return Client(address, headers=headers)  # it asks the cluster's version at once
    except Exception as e:  # ConnectionError, a refused token, a RuntimeError from a dashboard still starting
        raise classified(address, e, token_file) from e


def classified(address: str, error: Exception, token_file: Path | None) -> Exception:
    """An error of the Jobs API as mtld tells them apart: JobMissing (404), ClusterRefused (401, 403: the
    token), ClusterUnreachable (no answer, a timeout, a server error: all may pass), else the error itself (a
    request the cluster refuses, e.g. a bad runtime_env)."""
    if isinstance(error, (ClusterUnreachable, JobMissing)):
        return error
    text = str(error)
    refused = refusal(address, error, token_file)
    if refused is not None:
        return ClusterRefused(refused)
    if "status code 404" in text or "does not exist" in text:
        return JobMissing(first_line(error))
    if _is_connection_error(error):
        return ClusterUnreachable(f"cannot reach the Ray cluster at {address}: {first_line(error)}")
    if code := re.search(r"status code (5\d\d)", text):  # its last line says what failed (a traceback's end)
        said = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip() not in ("", ".")), "")
        return ClusterUnreachable(f"the Ray cluster at {address} answered with an error ({code.group(1)}): "
                                  f"{said.removesuffix('.')}")
    return error


def refusal(address: str, error: Exception, token_file: Path | None) -> str | None:
    """The one line for a 401 or 403 from the cluster (naming the setting), or None for any other error."""
    text = str(error)
    name = type(error).__name__
    if name == "AuthenticationError" or re.search(r"status code 40[13]\b", text):
        wrong = "Authentication failed" in text or re.search(r"status code 403\b", text) is not None
        said = next((ln.strip() for ln in text.splitlines() if ln.startswith("Authentication")), first_line(error))
        if not wrong:
            return (f"{TOKEN_SETTING} - the Ray cluster at {address} requires a token (it runs with "
                    f"RAY_AUTH_MODE=token) and {'none was sent' if token_file is None else 'it was not taken'}: "
                    f"set {TOKEN_SETTING} to a file, readable by you only, that holds the cluster's token ({said})")
        whose = f"in {token_file}" if token_file else "from Ray's RAY_AUTH_* variables"
        return (f"{TOKEN_SETTING} - the Ray cluster at {address} refused the token {whose}: it must hold the "
                f"token the cluster was started with ({said})")
    return None


class JobsApi:
    """Ray's Jobs API at one address, with the token if one is set: connects when first asked, and again
    after an outage; every call's error classified (`classified`)."""

    def __init__(self, address: str, token_file: Path | None = None, client: Any = None):
        self.address, self.token_file = address, token_file
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = client_for(self.address, self.token_file)
        return self._client

    def call(self, request: Callable[[Any], T]) -> T:
        """`request(client)`. Raises JobMissing, ClusterRefused, ClusterUnreachable, or the SDK's own error.
        (The client holds no connection, only the address and headers: it outlives an outage.)"""
        try:
            return request(self.client)
        except Exception as e:
            error = classified(self.address, e, self.token_file)
            if error is e:
                raise
            raise error from e

    def get(self, endpoint: str) -> Any:
        """The JSON of a GET on the dashboard (the SDK's own request helper, with its headers); None when
        the endpoint is not there (an older Ray)."""
        def request(client: Any) -> Any:
            answer = client._do_request("GET", endpoint)
            if answer.status_code == 404:
                return None
            if answer.status_code >= 400:
                raise RuntimeError(f"Request failed with status code {answer.status_code}: {answer.text}")
            return answer.json()

        return self.call(request)

    def node_totals(self) -> list[dict[str, float]] | None:
        """Each live node's total resources (the state API), or None when this cluster cannot say."""
        answer = self.get("/api/v0/nodes?detail=1&limit=10000")
        try:
            nodes = answer["data"]["result"]["result"]
            return [dict(n.get("resources_total") or {}) for n in nodes if n.get("state") == "ALIVE"]
        except (TypeError, KeyError):
            return None

    def cannot_run(self, wanted: dict[str, float]) -> str | None:
        """Why no live node can ever start a run that asks for `wanted`, or None (it can, or nobody can tell).
        ClusterUnreachable (ClusterRefused) when the cluster does not answer (refuses the token)."""
        try:
            totals = self.node_totals()
        except ClusterUnreachable:
            raise
        except Exception:  # an answer of another shape (another Ray version): the check is a courtesy
            return None
        return None if totals is None else unsatisfiable(wanted, totals)


def cluster_reason(message: str | None, limit: int = 400) -> str:
    """Ray's message about a job its cluster failed, as one line: its unindented lines (Ray puts the actor's
    fields on indented ones, and why it died on a line of its own: "The actor died because its node has
    died."), cut at `limit` characters."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip() and not line[0].isspace()]
    text = " ".join(lines)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _is_connection_error(error: BaseException) -> bool:
    import requests  # Ray's client is built on it

    return isinstance(error, (ConnectionError, requests.ConnectionError, requests.Timeout))


def first_line(value: object) -> str:
    """An error or message as its first line (Ray's errors carry whole tracebacks and logs)."""
    text = str(value or "").strip()
    return text.splitlines()[0] if text else ""
