"""Registry auth: password hashing, the §4 action model, the token service and the /v2/ hook.

    passwords   scrypt hashes in a self-describing string; every check costs two hashes
    actions     action strings, repository patterns, pull/push/delete mapping, Permissions
    tokens      Ed25519-signed JWT access and refresh tokens, the signing key in the data dir
    identity    credentials (Basic, Bearer, refresh tokens) to a Principal; the admin
    ratelimit   failed logins per (account, source address), reserved before the hash
    sources     the source address behind trusted reverse proxies (X-Forwarded-For)
    authorizer  the dispatcher's hook: route + method → required action → 401/403 or go
    endpoints   /oauth2/token (GET and POST form flows)
"""

from connreg.auth.actions import Permissions, parse_action
from connreg.auth.authorizer import Authorizer
from connreg.auth.identity import ADMIN, Authenticator, Principal
from connreg.auth.passwords import generate_password, hash_password, verify_password
from connreg.auth.tokens import TokenService

__all__ = ["ADMIN", "Authenticator", "Authorizer", "Permissions", "Principal", "TokenService",
           "generate_password", "hash_password", "parse_action", "verify_password"]
