"""A small HTTP client for the management API, and the errors every CLI command reports.

`connect(args)` resolves where to talk, as whom and which CA to trust for an https registry
(flags, then `CONNREG_*` environment, then the file `connreg login` wrote) and returns a
`Client`. Every failure becomes a `CliError` whose
message is one line taken from the API's OCI error body; no message ever contains a password.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from connreg.cli import credentials
from connreg.tls import TrustError, tls_failure, untrusted_certificate, verifying_context

if TYPE_CHECKING:  # loaded by the commands that talk to a registry, not by `connreg serve`
    import httpx

API_PREFIX = "/connreg/v1"
TIMEOUT_SECONDS = 60.0
# What a connreg node says for a path it has no route for (errors.NOT_FOUND).
UNKNOWN_ENDPOINT_MESSAGE = "no such endpoint"


class CliError(Exception):
    """A failure reported as `connreg: error: <message>` with `exit_code` (1: the API refused)."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status when the API refused
        self.api_message = message  # the API's own words, without the CLI's hints
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    """The command line itself is wrong (exit 2, as argparse does)."""

    exit_code = 2


def path(*parts: str) -> str:
    """`/connreg/v1/<part>/<part>` with each part percent-encoded."""
    return API_PREFIX + "".join("/" + quote(p, safe="") for p in parts)


def normalize_url(url: str) -> str:
    """`https://host:port` without userinfo, trailing slash or path noise; refuses bare hosts."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"registry URL must look like https://host[:port], got {redact(url)!r}")
    if parts.username or parts.password:
        raise UsageError("registry URL must not contain credentials; use --username/--password")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def redact(url: str) -> str:
    """The URL with any `user:password@` removed, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def error_message(response: httpx.Response) -> str:
    """One line from an OCI error body (`{"errors":[{"code","message","detail"}]}`)."""
    try:
        errors = response.json().get("errors") or []
        messages = []
        for e in errors:
            msg = str(e.get("message") or e.get("code") or "").strip()
            detail = e.get("detail")
            if isinstance(detail, str) and detail.strip() and detail.strip() not in msg:
                msg = f"{msg}: {detail.strip()}" if msg else detail.strip()
            if msg:
                messages.append(msg)
        if messages:
            return " ".join("; ".join(messages).split())
    except (ValueError, AttributeError):
        pass
    reason = response.reason_phrase or "error"
    return f"HTTP {response.status_code} {reason} from {response.request.method} {response.url.path}"


class Client:
    """Calls the management API of one registry, optionally as one identity (HTTP Basic)."""

    def __init__(self, registry: str, username: str | None = None, password: str | None = None,
                 transport: httpx.BaseTransport | None = None, ca_file: str | None = None):
        import httpx

        self.registry = registry
        self.username = username
        # An https registry is verified against `ca_file`, else the system trust store.
        self.ca_file = ca_file
        try:
            verify = verifying_context(ca_file)
        except TrustError as exc:
            raise UsageError(f"--ca-file: {exc}") from None
        auth = (username, password or "") if username else None
        self._http = httpx.Client(base_url=registry, auth=auth, timeout=TIMEOUT_SECONDS,
                                  transport=transport, headers={"Accept": "application/json"},
                                  verify=verify)

    def request(self, method: str, url: str, *, json: Any = None,
                params: dict[str, str] | None = None) -> Any:
        """The decoded JSON answer (None for an empty one); raises CliError on any failure."""
        import httpx

        try:
            response = self._http.request(method, url, json=json, params=params)
        except httpx.TimeoutException:
            raise CliError(f"{self.registry} did not answer within {TIMEOUT_SECONDS:.0f}s") from None
        except httpx.HTTPError as exc:
            refused = tls_failure(exc, self.registry, self.ca_file, role="registry")
            if refused is not None:
                hint = "" if self.ca_file or not untrusted_certificate(exc) else \
                    " (pass --ca-file or set CONNREG_CA_FILE)"
                raise CliError(refused + hint) from None
            # httpx messages name the host and the OS reason, never the Authorization header.
            reason = str(exc) or type(exc).__name__
            raise CliError(f"cannot reach {self.registry}: {reason}") from None
        if response.is_success:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise CliError(f"{self.registry} answered {method} {url} with something other "
                               "than JSON; is it a connreg root?") from None
        message = api_message = error_message(response)
        if response.status_code == 401:
            who = f"user {self.username!r}" if self.username else "no credentials"
            message += (f" ({who}; pass --username/--password, set CONNREG_USERNAME/"
                        "CONNREG_PASSWORD, or run 'connreg login')")
        elif response.status_code == 429 and response.headers.get("Retry-After", "").isdigit():
            message += f" (retry in {response.headers['Retry-After']}s)"
        elif response.status_code == 404 and message == UNKNOWN_ENDPOINT_MESSAGE:
            message += f" ({self.registry} does not serve the management API)"
        error = CliError(message, status=response.status_code)
        error.api_message = api_message
        raise error

    def get(self, url: str, params: dict[str, str] | None = None) -> Any:
        return self.request("GET", url, params=params)

    def post(self, url: str, body: Any = None) -> Any:
        return self.request("POST", url, json=body)

    def patch(self, url: str, body: Any) -> Any:
        return self.request("PATCH", url, json=body)

    def delete(self, url: str, params: dict[str, str] | None = None) -> Any:
        return self.request("DELETE", url, params=params)


def connect(args) -> Client:
    """A Client for `args.registry`/`--username`/`--password`, falling back to env and login."""
    stored = credentials.load()
    registry = args.registry or os.environ.get("CONNREG_REGISTRY") or stored.get("current")
    if not registry:
        raise UsageError("no registry given: pass --registry URL, set CONNREG_REGISTRY, "
                         "or run 'connreg login URL'")
    registry = normalize_url(registry)
    username = args.username or os.environ.get("CONNREG_USERNAME")
    password = args.password or os.environ.get("CONNREG_PASSWORD")
    saved = stored.get("registries", {}).get(registry) or {}
    if not username and not password:
        username, password = saved.get("username"), saved.get("password")
    elif username and not password:
        if saved.get("username") == username:
            password = saved.get("password")
        elif sys.stdin.isatty():
            password = getpass.getpass(f"Password for {username} at {registry}: ")
        else:
            raise UsageError(f"no password for user {username!r}: pass --password or set "
                             "CONNREG_PASSWORD")
    elif password and not username:
        raise UsageError("a password was given without a user name: pass --username or set "
                         "CONNREG_USERNAME")
    ca_file = ca_file_for(args, saved)
    return Client(registry, username, password, ca_file=ca_file)


def ca_file_for(args, saved: dict | None = None) -> str | None:
    """The CA file to verify an https registry with: --ca-file, CONNREG_CA_FILE, or the one
    stored by `connreg login`; None means the system trust store."""
    given = getattr(args, "ca_file", None) or os.environ.get("CONNREG_CA_FILE")
    if given:
        return os.path.abspath(given)
    return (saved or {}).get("caFile") or None
