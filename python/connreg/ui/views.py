"""The dashboard's pages under /ui/: login and logout, the fleet, repositories, audit events.

Same identities as the rest of the node: the admin, or a token whose scope map holds
`metrics/read` (what /metrics needs). The login form posts the password once; the session
cookie that comes back is HttpOnly, SameSite=Strict, Path=/ui and Secure over TLS. Every POST
carries a CSRF token (the login form's in a double-submit cookie, later forms the session's).
Templates autoescape everything; responses forbid framing, inline scripts and caching.
"""

from __future__ import annotations

import logging
import secrets
import urllib.parse

import trio
from quart import Blueprint, Response, current_app, redirect, render_template, request

from connreg import errors
from connreg.api.http import read_body_limited
from connreg.auth.actions import METRICS_READ
from connreg.auth.authorizer import OPEN, source_address
from connreg.errors import RegistryError
from connreg.metrics import fleet
from connreg.references import MAX_NAME_LENGTH, NAME_RE
from connreg.ui import format as fmt
from connreg.ui.sessions import COOKIE, COOKIE_PATH, LOGIN_COOKIE, Sessions, same_token

log = logging.getLogger("connreg.ui")
bp = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates",
               static_folder="static")

MAX_FORM_BYTES = 8 * 1024
MAX_USERNAME = 100
MAX_PASSWORD = 1024
PAGE = 100            # repositories and tags per page
MAX_SCAN_PAGES = 20   # catalog pages read for one page of repositories the viewer may pull
MAX_REFERRERS = 50    # shown per manifest
AUDIT_SHOWN = 30
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _sessions() -> Sessions:
    return current_app.extensions["ui_sessions"]


def _secure() -> bool:
    """Cookies are Secure when the browser reached us over TLS: directly, or through a trusted
    reverse proxy that terminated it (`trusted_proxies`, its `X-Forwarded-Proto`)."""
    if request.scheme == "https":
        return True
    authz = current_app.extensions.get("authorizer")
    return authz is not None and authz.proxies.forwarded_https(
        request.remote_addr, request.headers.getlist("X-Forwarded-Proto"))


@bp.after_request
async def security_headers(resp: Response) -> Response:
    for key, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(key, value)
    return resp


class Viewer:
    """Who is looking, and the CSRF token their forms carry."""

    def __init__(self, principal, csrf: str, cookie: str | None):
        self.principal = principal
        self.csrf = csrf
        self.cookie = cookie

    @property
    def name(self) -> str:
        return "(auth off)" if self.principal is OPEN else self.principal.name

    def may_pull(self, repo: str) -> bool:
        return self.principal.perms.everything or self.principal.can(repo, "pull")


def _viewer() -> Viewer | None:
    authz = current_app.extensions["authorizer"]
    if not authz.enabled:
        return Viewer(OPEN, "", None)
    cookie = request.cookies.get(COOKIE)
    session = _sessions().get(cookie)
    if session is None:
        return None
    principal = authz.authn.principal_for(session.subject)
    if principal is None or not principal.perms.allows_node(METRICS_READ):
        _sessions().end(cookie)  # disabled, deleted or narrowed since the login
        return None
    return Viewer(principal, session.csrf, cookie)


def _to_login() -> Response:
    return redirect("/ui/login", 303)


async def _form() -> dict[str, str]:
    """The urlencoded form of a POST, size-limited; first value of each field."""
    body = await read_body_limited(MAX_FORM_BYTES, errors.BODY_TOO_LARGE)
    try:
        parsed = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True,
                                       max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise RegistryError(errors.INVALID_BODY, message="the form could not be read") from None
    return {key: values[0] for key, values in parsed.items()}


async def _render(template: str, status: int = 200, **context) -> Response:
    body = await render_template(template, fmt=fmt, node_name=_node_name(), **context)
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def _node_name() -> str:
    service = current_app.extensions.get("sync")
    return service.config.name if service is not None else fleet.ROOT_NAME


# --- login and logout ----------------------------------------------------------------------
async def _login_page(message: str | None = None, status: int = 200,
                      username: str = "") -> Response:
    token = secrets.token_urlsafe(32)
    resp = await _render("login.html", status, csrf=token, message=message,
                         username=username)
    resp.set_cookie(LOGIN_COOKIE, token, max_age=3600, path=COOKIE_PATH, httponly=True,
                    samesite="Strict", secure=_secure())
    return resp


@bp.route("/login", methods=["GET"])
async def login_form() -> Response:
    if _viewer() is not None:
        return redirect("/ui/", 303)
    return await _login_page()


@bp.route("/login", methods=["POST"])
async def login() -> Response:
    authz = current_app.extensions["authorizer"]
    if not authz.enabled:
        return redirect("/ui/", 303)
    form = await _form()
    if not same_token(form.get("csrf"), request.cookies.get(LOGIN_COOKIE)):
        return await _login_page("The login form expired; please try again.", 403)
    username = form.get("username", "")[:MAX_USERNAME + 1]
    password = form.get("password", "")
    if not username or not password or len(username) > MAX_USERNAME \
            or len(password) > MAX_PASSWORD:
        return await _login_page("Give a username and a password.", 400, username[:100])
    try:
        principal = await authz.authn.login(username, password, source_address())
    except RegistryError as exc:
        status = 429 if exc.code is errors.TOO_MANY_REQUESTS else 401
        return await _login_page(exc.message, status, username)
    if not principal.perms.allows_node(METRICS_READ):
        return await _login_page(f"{principal.name} may not use the dashboard: that needs the "
                                 f"admin or a token with {METRICS_READ}.", 403, username)
    cookie, _ = _sessions().create(principal.name)
    log.info("dashboard login by %s from %s", principal.name, source_address())
    resp = redirect("/ui/", 303)
    resp.set_cookie(COOKIE, cookie, max_age=int(_sessions().lifetime), path=COOKIE_PATH,
                    httponly=True, samesite="Strict", secure=_secure())
    resp.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return resp


@bp.route("/logout", methods=["POST"])
async def logout() -> Response:
    viewer = _viewer()
    if viewer is None:
        return _to_login()
    form = await _form()
    if viewer.principal is not OPEN and not same_token(form.get("csrf"), viewer.csrf):
        raise RegistryError(errors.DENIED, message="logout without this session's form token")
    _sessions().end(viewer.cookie)
    resp = _to_login()
    resp.delete_cookie(COOKIE, path=COOKIE_PATH)
    return resp


# --- the fleet -------------------------------------------------------------------------------
async def _audit_events() -> list[dict] | None:
    audit = current_app.extensions.get("audit")
    if audit is None or not hasattr(audit, "recent"):
        return None
    return await trio.to_thread.run_sync(audit.recent, AUDIT_SHOWN)


async def _live_context() -> dict:
    snapshot = await fleet.take(current_app)
    return {"snapshot": snapshot, "audit": await _audit_events(),
            "is_root": current_app.extensions.get("sync") is None}


@bp.route("/", methods=["GET"])
async def dashboard() -> Response:
    viewer = _viewer()
    if viewer is None:
        return _to_login()
    return await _render("dashboard.html", viewer=viewer, **await _live_context())


@bp.route("/live", methods=["GET"])
async def live() -> Response:
    """The refreshing part of the dashboard (the script fetches it every few seconds)."""
    viewer = _viewer()
    if viewer is None:
        return Response("session ended", status=401, content_type="text/plain")
    return await _render("_live.html", viewer=viewer, **await _live_context())


# --- repositories ----------------------------------------------------------------------------
def _valid_name(text: str | None) -> str | None:
    if text and len(text) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(text):
        return text
    return None


@bp.route("/repositories", methods=["GET"])
async def repositories() -> Response:
    viewer = _viewer()
    if viewer is None:
        return _to_login()
    meta = current_app.extensions["registry"].meta
    last = _valid_name(request.args.get("last"))
    shown: list[dict] = []
    cursor = last
    # Read pages until one page's worth is visible to this viewer, the catalog ends, or
    # MAX_SCAN_PAGES were read (a viewer who may pull little of a large catalog pages on).
    ended = False
    for _ in range(MAX_SCAN_PAGES):
        names = meta.list_repositories(PAGE, cursor)
        for name in names:
            if len(shown) >= PAGE:
                break
            cursor = name  # read: the next page starts after it
            if viewer.may_pull(name):
                shown.append({"name": name, "tags": len(meta.list_tags(name, PAGE + 1, None))})
        if len(names) < PAGE and (not names or cursor == names[-1]):
            ended = True
            break
        if len(shown) >= PAGE:
            break
    more = None if ended else cursor
    return await _render("repositories.html", viewer=viewer, repositories=shown, more=more)


def _lock_state(meta, repo: str, tag: str | None = None, digest: str | None = None):
    """Effective lock attributes from the locks module, None where it is absent."""
    try:
        from connreg.locks import policy
    except ImportError:
        return None
    try:
        return policy.attributes(meta, repo, tag=tag, digest=digest)
    except Exception:  # a node without the locks table (older data dir): shown as unknown
        log.debug("lock state of %s unavailable", repo, exc_info=True)
        return None


@bp.route("/repositories/<path:repo>", methods=["GET"])
async def repository(repo: str) -> Response:
    viewer = _viewer()
    if viewer is None:
        return _to_login()
    if _valid_name(repo) is None:
        raise RegistryError(errors.NAME_INVALID, detail={"name": repo[:300]})
    meta = current_app.extensions["registry"].meta
    if not viewer.may_pull(repo) or not meta.repository_exists(repo):
        raise RegistryError(errors.NAME_UNKNOWN, detail={"name": repo})
    last = request.args.get("last")
    last = last if last and len(last) <= 128 else None
    tags = meta.list_tags(repo, PAGE, last)
    rows, tagged = [], set()
    for tag in tags:
        digest = meta.resolve_tag(repo, tag)
        record = meta.get_manifest(repo, digest) if digest else None
        tagged.add(digest)
        rows.append({"tag": tag, "digest": digest, "size": record.size if record else None,
                     "media_type": record.media_type if record else None,
                     "referrers": _referrers(meta, repo, digest),
                     "locks": _lock_state(meta, repo, tag=tag)})
    untagged = [d for d in meta.manifest_digests(repo) if d not in tagged][:PAGE]
    untagged_rows = []
    for digest in untagged:
        record = meta.get_manifest(repo, digest)
        if record is None or record.subject:  # referrers are listed under their subject
            continue
        untagged_rows.append({"digest": digest, "size": record.size,
                              "media_type": record.media_type,
                              "referrers": _referrers(meta, repo, digest)})
    return await _render("repository.html", viewer=viewer, repo=repo, tags=rows,
                         untagged=untagged_rows, locks=_lock_state(meta, repo),
                         more=tags[-1] if len(tags) == PAGE else None)


def _referrers(meta, repo: str, digest: str | None) -> list[dict]:
    if not digest:
        return []
    return [{"digest": r.digest, "artifact_type": r.artifact_type or r.media_type,
             "size": r.size} for r in meta.referrers(repo, digest, None)[:MAX_REFERRERS]]


def install(app) -> None:
    settings = app.config["CONNREG_SETTINGS"]
    app.extensions["ui_sessions"] = Sessions(settings.ui_session_seconds)
    app.register_blueprint(bp)
