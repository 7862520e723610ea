"""`/oauth2/token`: the Docker/OCI token endpoint (GET with Basic credentials, POST form).

GET  /oauth2/token?service=S&scope=repository:NAME:pull,push[&scope=…][&offline_token=true]
POST /oauth2/token  grant_type=password&username=U&password=P&scope=…[&access_type=offline]
POST /oauth2/token  grant_type=refresh_token&refresh_token=R&scope=…

Refresh tokens (docker keeps the one from `docker login` as its identity token and uses it for
every later command) stay valid until the password they were obtained with is regenerated,
disabled or expires, at most `refresh_token_max_lifetime_seconds` after that login. A bad
refresh token is not counted as a failed login: it cannot be guessed (Ed25519 signature), and
counting it would let anyone lock others out.

The token grants, per requested repository, the intersection of the requested actions and the
caller's permissions (unknown or refused actions are silently left out, as distribution does).
"""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import parse_qsl

from quart import Blueprint, Response, current_app, request
from werkzeug.datastructures import MultiDict

from connreg import errors
from connreg.api.http import json_response, read_body_limited
from connreg.auth.authorizer import Authorizer, source_address
from connreg.auth.identity import Principal
from connreg.errors import RegistryError
from connreg.references import MAX_NAME_LENGTH, NAME_RE

bp = Blueprint("oauth2", __name__)
REGISTRY_ACTIONS = ("pull", "push", "delete")
# A token request form is a few short fields; scopes may repeat, but not without end.
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 200


def _authorizer() -> Authorizer:
    return current_app.extensions["authorizer"]


def _requested_scopes(values: list[str]) -> tuple[dict[str, set[str]], bool]:
    repos: dict[str, set[str]] = {}
    catalog = False
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "registry" and name == "catalog":
                catalog = True
            elif kind == "repository" and NAME_RE.fullmatch(name) and len(name) <= MAX_NAME_LENGTH:
                wanted = set(actions.split(","))
                if "*" in wanted:
                    wanted = set(REGISTRY_ACTIONS)
                repos.setdefault(name, set()).update(wanted & set(REGISTRY_ACTIONS))
    return repos, catalog


def _unauthorized(message: str) -> RegistryError:
    return RegistryError(errors.UNAUTHORIZED, message=message,
                         headers={"WWW-Authenticate": 'Basic realm="connreg"'})


def _issue(principal: Principal, scopes: list[str], refresh: bool) -> Response:
    authz = _authorizer()
    requested, catalog = _requested_scopes(scopes)
    granted = {repo: wanted & principal.perms.docker_actions(repo)
               for repo, wanted in requested.items()}
    granted = {repo: actions for repo, actions in granted.items() if actions}
    token, claims = authz.authn.tokens.issue_access(principal.name, granted, catalog)
    issued = datetime.fromtimestamp(claims["iat"], timezone.utc)
    body = {"token": token, "access_token": token,
            "expires_in": claims["exp"] - claims["iat"],
            "issued_at": issued.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "scope": " ".join(f"repository:{r}:{','.join(sorted(a))}"
                              for r, a in sorted(granted.items()))}
    refresh_token = authz.authn.issue_refresh(principal) if refresh else None
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return json_response(body, headers={"Cache-Control": "no-store"})


def _disabled() -> None:
    if not _authorizer().enabled:
        raise RegistryError(errors.NOT_FOUND, message="authentication is disabled on this node")


@bp.route("/oauth2/token", methods=["GET"])
async def token_get() -> Response:
    _disabled()
    authz = _authorizer()
    principal = await authz.authn.authenticate(request.headers.get("Authorization"),
                                               source_address())
    if principal is None:
        principal = authz.authn.anonymous()
        if principal is None:
            raise _unauthorized("credentials required")
    refresh = request.args.get("offline_token", "").lower() == "true"
    return _issue(principal, request.args.getlist("scope"), refresh)


async def _read_form() -> MultiDict:
    """The urlencoded form, read under MAX_FORM_BYTES whether or not a Content-Length was sent
    (a chunked body is counted as it arrives, never buffered past the limit)."""
    body = await read_body_limited(MAX_FORM_BYTES, errors.BODY_TOO_LARGE)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                          max_num_fields=MAX_FORM_FIELDS, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RegistryError(errors.INVALID_BODY, message=f"token request form invalid: {exc}"
                            ) from None
    return MultiDict(pairs)


@bp.route("/oauth2/token", methods=["POST"])
async def token_post() -> Response:
    _disabled()
    authz = _authorizer()
    form = await _read_form()
    grant = form.get("grant_type", "")
    scopes = form.getlist("scope")
    offline = form.get("access_type", "") == "offline"
    if grant == "password":
        principal = await authz.authn.login(form.get("username", ""), form.get("password", ""),
                                            source_address())
        return _issue(principal, scopes, offline)
    if grant == "refresh_token":
        try:
            principal = authz.authn.refresh_principal(form.get("refresh_token", ""))
        except RegistryError as exc:
            raise _unauthorized(exc.message) from None
        return _issue(principal, scopes, True)
    raise RegistryError(errors.ErrorCode("UNSUPPORTED", 400, "unsupported grant_type"),
                        detail={"grant_type": grant[:50]})
