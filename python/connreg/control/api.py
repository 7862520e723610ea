"""The management API under /connreg/v1/ (docs/management-api.md), served by the root.

Every endpoint authenticates the caller (Basic as `admin` or a token, or a Bearer token) and
then requires the admin, except reading a connected registry (admin or
`gateway/<cr>/config/read`) and activating it (its own sync token). On a node that is itself a
connected registry only `activate` answers: it is relayed to the parent (control.activation).
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app, request

from connreg import errors
from connreg.api.http import empty, json_response, read_body_limited, read_json_body
from connreg.auth.actions import Permissions
from connreg.auth.authorizer import Authorizer
from connreg.auth.identity import Principal
from connreg.control import activation
from connreg.control.service import ControlPlane
from connreg.control.validation import invalid
from connreg.errors import RegistryError

bp = Blueprint("management", __name__, url_prefix="/connreg/v1")
MAX_BODY = 4 * 1024 * 1024
NO_STORE = {"Cache-Control": "no-store"}


def _plane() -> ControlPlane:
    return current_app.extensions["control"]


def _authz() -> Authorizer:
    return current_app.extensions["authorizer"]


async def _caller() -> Principal:
    authz = _authz()
    if not authz.enabled:
        return Principal("admin", "admin", Permissions(everything=True))  # --no-auth node
    principal = await authz.caller()
    if principal is None or principal.kind == "anonymous":
        raise authz.unauthorized(message="the management API needs credentials")
    request.audit_actor = principal.name  # who changed what (audit/hooks.py)
    return principal


def _is_admin(p: Principal) -> bool:
    return p.kind == "admin"


async def _admin() -> Principal:
    _root_only()
    p = await _caller()
    if not _is_admin(p):
        raise RegistryError(errors.DENIED, message=f"{p.name} may not manage resources: "
                            "the management API needs the admin")
    return p


def _root_only() -> None:
    if current_app.config["CONNREG_SETTINGS"].is_connected_registry:
        raise RegistryError(errors.DENIED, message="this node is a connected registry: manage "
                            "the hierarchy at the root")


async def _body() -> dict:
    # size-limited before parsing, depth- and number-limited while parsing (413/400)
    doc = await read_json_body(MAX_BODY, empty_as={})
    if not isinstance(doc, dict):
        raise invalid("request body must be a JSON object")
    return doc


def _flag(name: str) -> bool:
    return request.args.get(name, "").lower() in ("1", "true", "yes")


# --- scope maps ------------------------------------------------------------------------------
@bp.route("/scope-maps", methods=["POST"])
async def create_scope_map() -> Response:
    await _admin()
    return json_response(await _plane().create_scope_map(await _body()), 201)


@bp.route("/scope-maps", methods=["GET"])
async def list_scope_maps() -> Response:
    await _admin()
    return json_response({"scopeMaps": _plane().list_scope_maps()})


@bp.route("/scope-maps/<name>", methods=["GET"])
async def get_scope_map(name: str) -> Response:
    await _admin()
    return json_response(_plane().get_scope_map(name))


@bp.route("/scope-maps/<name>", methods=["PATCH"])
async def update_scope_map(name: str) -> Response:
    await _admin()
    return json_response(await _plane().update_scope_map(name, await _body()))


@bp.route("/scope-maps/<name>", methods=["DELETE"])
async def delete_scope_map(name: str) -> Response:
    await _admin()
    await _plane().delete_scope_map(name)
    return empty(204)


# --- tokens ----------------------------------------------------------------------------------
@bp.route("/tokens", methods=["POST"])
async def create_token() -> Response:
    await _admin()
    return json_response(await _plane().create_token(await _body()), 201, headers=NO_STORE)


@bp.route("/tokens", methods=["GET"])
async def list_tokens() -> Response:
    await _admin()
    return json_response({"tokens": _plane().list_tokens()})


@bp.route("/tokens/<name>", methods=["GET"])
async def get_token(name: str) -> Response:
    await _admin()
    return json_response(_plane().get_token(name))


@bp.route("/tokens/<name>", methods=["PATCH"])
async def update_token(name: str) -> Response:
    await _admin()
    return json_response(await _plane().update_token(name, await _body()))


@bp.route("/tokens/<name>", methods=["DELETE"])
async def delete_token(name: str) -> Response:
    await _admin()
    await _plane().delete_token(name)
    return empty(204)


@bp.route("/tokens/<name>/credentials", methods=["POST"])
async def generate_credentials(name: str) -> Response:
    await _admin()
    return json_response(await _plane().generate_credentials(name, await _body()),
                         headers=NO_STORE)


# --- connected registries ----------------------------------------------------------------------
@bp.route("/connected-registries", methods=["POST"])
async def create_cr() -> Response:
    await _admin()
    return json_response(await _plane().create_connected_registry(await _body()), 201)


@bp.route("/connected-registries", methods=["GET"])
async def list_crs() -> Response:
    await _admin()
    docs = _plane().list_connected_registries(request.args.get("parent") or None,
                                              _flag("noChildren"))
    return json_response({"connectedRegistries": docs})


@bp.route("/connected-registries/<name>", methods=["GET"])
async def get_cr(name: str) -> Response:
    _root_only()
    p = await _caller()
    if not (_is_admin(p) or p.perms.allows_gateway(name, "config/read")):
        raise RegistryError(errors.DENIED, message=f"{p.name} may not read connected registry "
                            f"{name}")
    return json_response(_plane().get_connected_registry(name))


@bp.route("/connected-registries/<name>", methods=["PATCH"])
async def update_cr(name: str) -> Response:
    await _admin()
    return json_response(await _plane().update_connected_registry(name, await _body()))


@bp.route("/connected-registries/<name>", methods=["DELETE"])
async def delete_cr(name: str) -> Response:
    await _admin()
    return json_response(await _plane().delete_connected_registry(name, _flag("cleanup")))


@bp.route("/connected-registries/<name>/repositories", methods=["POST"])
async def cr_repositories(name: str) -> Response:
    await _admin()
    return json_response(await _plane().change_repositories(name, await _body()))


@bp.route("/connected-registries/<name>/deactivate", methods=["POST"])
async def deactivate_cr(name: str) -> Response:
    await _admin()
    return json_response(await _plane().deactivate(name))


@bp.route("/connected-registries/<name>/resync", methods=["POST"])
async def resync_cr(name: str) -> Response:
    await _admin()
    return json_response(await _plane().resync(name), 202)


@bp.route("/connected-registries/<name>/settings", methods=["POST"])
async def cr_settings(name: str) -> Response:
    await _admin()
    return json_response(await _plane().settings_for(name, await _body()), headers=NO_STORE)


@bp.route("/connected-registries/<name>/activate", methods=["POST"])
async def activate_cr(name: str) -> Response:
    settings = current_app.config["CONNREG_SETTINGS"]
    if settings.is_connected_registry:
        import httpx  # a node with a parent has it loaded already

        body = await read_body_limited(MAX_BODY, errors.BODY_TOO_LARGE)  # before buffering
        try:
            resp = await activation.relay_activation(
                settings, name, request.headers.get("Authorization"), body)
        except httpx.HTTPError as exc:
            raise RegistryError(errors.ErrorCode("UNAVAILABLE", 503, "parent unreachable"),
                                message=f"cannot relay activation to the parent: "
                                        f"{activation.connection(settings).unreachable(exc)}"
                                ) from None
        return Response(resp.content, status=resp.status_code, content_type="application/json")
    p = await _caller()
    if not (_is_admin(p) or p.perms.allows_gateway(name, "config/write")):
        raise RegistryError(errors.DENIED, message=f"{p.name} may not activate connected "
                            f"registry {name}")
    return json_response(await _plane().activate(name, p.name, await _body()))
