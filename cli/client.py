"""The HTTP API as the CLI calls it: one client, errors turned into exit codes and sentences."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

# Exit codes (also in docs/cli.md): scripts that run every 30 minutes branch on these.
EXIT_OK = 0
EXIT_JOB_FAILED = 1  # the job ran and failed (the previous dataset still serves)
EXIT_USAGE = 2  # bad command line (click's own code)
EXIT_REFUSED = 3  # the API refused the request (4xx: token, unknown id, conflict, bad file)
EXIT_UNAVAILABLE = 4  # the API could not be reached or answered 5xx: retry later


def job_path(job_id: str) -> str:
    """A job id as typed is one path segment: ``a/../datasets`` must not reach another route."""
    return f"/jobs/{quote(job_id, safe='')}"


class CliError(Exception):
    """Ends the command with a sentence on stderr and the given exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else str(detail)


# What to do about a refused token, said where it is refused.
TOKEN_HINTS = {
    401: "; pass the write token with --token or set PROMOTIONS_TOKEN",
    403: "; check the token given with --token or PROMOTIONS_TOKEN (the API's WRITE_TOKEN)",
}


def check(response: httpx.Response, what: str) -> httpx.Response:
    """``response`` if it is a success, else a CliError saying what the server said."""
    if response.is_success:
        return response
    code = EXIT_UNAVAILABLE if response.status_code >= 500 else EXIT_REFUSED
    hint = TOKEN_HINTS.get(response.status_code, "")
    raise CliError(f"{what}: {response.status_code} {_detail(response)}{hint}", code)


class Api:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def get_json(self, path: str, what: str, **params: Any) -> Any:
        with self.errors(what):
            return check(self.http.get(path, params=params), what).json()

    def post_json(self, path: str, what: str) -> Any:
        with self.errors(what):
            return check(self.http.post(path), what).json()

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Network failures become 'unavailable' with the URL that was tried."""
        try:
            yield
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise CliError(f"{what}: cannot reach {self.url} ({reason})", EXIT_UNAVAILABLE) from exc


@contextmanager
def api(url: str, token: str | None) -> Iterator[Api]:
    client = Api(url, token)
    try:
        yield client
    finally:
        client.close()
