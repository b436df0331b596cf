"""A real OAuth 2 authorization server (plus one protected resource) on loopback, for tests.

Every piece of OAuth logic is authlib's: ``AuthorizationServer`` with the authorization code
grant (PKCE S256 required, via ``CodeChallenge``), the refresh token grant, client
authentication (client_secret_basic and client_secret_post), ``BearerTokenGenerator`` and a
``ResourceProtector`` with a ``BearerTokenValidator``. This module only supplies what authlib
leaves to a framework integration: in-memory models, the request/response adapters and a
standard-library HTTP server (``ThreadingHTTPServer``, one thread per request, so concurrent
token requests really are served concurrently). All state lives in memory behind one lock.

Transport: plain http on 127.0.0.1. authlib accepts http for loopback hosts (RFC 8252 §7.3,
``authlib.common.security.is_secure_transport``), so ``AUTHLIB_INSECURE_TRANSPORT`` is NOT set
(it would be process-wide); ``start()`` fails loudly if the installed authlib would refuse.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from authlib.common.security import generate_token, is_secure_transport
from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    AuthorizationServer,
    ClientMixin,
    InvalidGrantError,
    InvalidRequestError,
    JsonRequest,
    OAuth2Error,
    OAuth2Request,
    ResourceProtector,
    TokenMixin,
    grants,
    list_to_scope,
    scope_to_list,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator, BearerTokenValidator, InvalidTokenError
from authlib.oauth2.rfc7636 import CodeChallenge

OWNER_ID = "owner-1"  # the one resource owner; /authorize consents on its behalf
AUTH_CODE_LIFETIME = 600  # seconds (RFC 6749 §4.1.2 recommends at most 10 minutes)
_SECRET_FIELDS = frozenset({"client_secret", "code_verifier"})  # never copied to token_requests
_AUTH_METHODS = ("client_secret_basic", "client_secret_post")

# (status, body, headers) as produced by authlib; dict bodies are sent as JSON.
_Response = tuple[int, "dict[str, Any] | str", list[tuple[str, str]]]


# --- models: what authlib's grants expect of a client, an authorization code and a token ---


@dataclass
class _Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str] | None  # None: any http(s) redirect_uri (gateway port is random)
    scopes: tuple[str, ...]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:  # omitted scope means everything the client may have (RFC 6749 §3.3)
            return list_to_scope(list(self.scopes))
        return list_to_scope([s for s in scope_to_list(scope) if s in self.scopes])

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if self.redirect_uris is None:
            return urlsplit(redirect_uri).scheme in ("http", "https")
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in _AUTH_METHODS  # confidential client: never "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


@dataclass
class _AuthCode(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str | None
    scope: str
    user_id: str
    code_challenge: str | None  # read by authlib's CodeChallenge
    code_challenge_method: str | None
    expires_at: float

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclass
class _Token(TokenMixin):
    access_token: str
    refresh_token: str | None
    client_id: str
    scope: str
    user_id: str
    expires_at: float  # expire_access_tokens() pulls this to "now"
    refresh_revoked: bool = False  # rotation or revoke_refresh_tokens()

    def check_client(self, client: ClientMixin) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return False  # access tokens end by expiry only (see expire_access_tokens)


# --- framework integration: the request/response adapters authlib asks a framework for ---


class _Request(OAuth2Request):
    """One HTTP request as read by the handler; the "framework request" handed to authlib."""

    def __init__(self, method: str, url: str, headers: Mapping[str, str], query: str, body: str):
        super().__init__(method, url, headers=headers)  # headers: case-insensitive HTTPMessage
        self._args = dict(parse_qsl(query, keep_blank_values=True))
        self._form = dict(parse_qsl(body, keep_blank_values=True))
        self.payload = BasicOAuth2Payload({**self._args, **self._form})

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


class _AuthServer(AuthorizationServer):
    """authlib's AuthorizationServer wired to OAuthServer's in-memory state."""

    def __init__(self, owner: OAuthServer) -> None:
        super().__init__(scopes_supported=list(owner.scopes))
        self.owner = owner
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **_: generate_token(42),
                refresh_token_generator=lambda **_: generate_token(48),
                expires_generator=owner.access_token_lifetime,
            ),
        )

    def query_client(self, client_id: str) -> _Client | None:
        return self.owner._client if client_id == self.owner._client.client_id else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        record = _Token(
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
            client_id=request.client.get_client_id(),
            scope=token.get("scope", ""),
            user_id=request.user,
            expires_at=time.time() + int(token.get("expires_in", 0)),
        )
        with self.owner._lock:
            self.owner._by_access[record.access_token] = record
            if record.refresh_token:
                self.owner._by_refresh[record.refresh_token] = record

    def create_oauth2_request(self, request: _Request) -> _Request:
        return request  # the handler already builds an OAuth2Request

    def create_json_request(self, request: _Request) -> JsonRequest:
        return JsonRequest(request.method, request.uri, request.headers)

    def handle_response(self, status: int, body: Any, headers: list) -> _Response:
        return status, body, list(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signal system here (authlib sends e.g. after_authenticate_client)."""


# --- grants: authlib's grant classes plus their storage hooks ---


class _S256Required(CodeChallenge):
    """PKCE with S256 only, and mandatory for every client (authlib's ``required=True`` alone
    only forces public clients to send a verifier)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: Any) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge' (PKCE is required)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(_AUTH_METHODS)
    server: _AuthServer

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        item = _AuthCode(
            code=code,
            client_id=request.client.get_client_id(),
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            user_id=request.user,
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            expires_at=time.time() + AUTH_CODE_LIFETIME,
        )
        with self.server.owner._lock:
            self.server.owner._codes[code] = item

    def query_authorization_code(self, code: str, client: _Client) -> _AuthCode | None:
        with self.server.owner._lock:
            item = self.server.owner._codes.get(code)
        if item and item.client_id == client.client_id and time.time() < item.expires_at:
            return item
        return None

    def delete_authorization_code(self, authorization_code: _AuthCode) -> None:
        with self.server.owner._lock:  # single use: a replayed code gets invalid_grant
            self.server.owner._codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: _AuthCode) -> str:
        return authorization_code.user_id


class _RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(_AUTH_METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = True  # OAuthServer subclasses this per rotate_refresh_tokens
    server: _AuthServer

    def authenticate_refresh_token(self, refresh_token: str) -> _Token | None:
        with self.server.owner._lock:
            token = self.server.owner._by_refresh.get(refresh_token)
            return token if token and not token.refresh_revoked else None

    def authenticate_user(self, refresh_token: _Token) -> str:
        return refresh_token.user_id

    def validate_token_request(self) -> None:
        super().validate_token_request()  # authlib: client auth, token lookup, scope check
        if self.INCLUDE_NEW_REFRESH_TOKEN:
            # Consume the old refresh token atomically now: of two concurrent refreshes with
            # the same token exactly one wins and the other gets invalid_grant, like a strict
            # rotating provider.
            with self.server.owner._lock:
                if self.request.refresh_token.refresh_revoked:
                    raise InvalidGrantError("Refresh token already used")
                self.request.refresh_token.refresh_revoked = True

    def create_token_response(self) -> _Response:
        if self.server.owner.refresh_delay > 0:  # widen the window for concurrency tests
            time.sleep(self.server.owner.refresh_delay)
        response = super().create_token_response()
        with self.server.owner._lock:
            self.server.owner._refresh_count += 1
        return response

    def revoke_old_credential(self, refresh_token: _Token) -> None:
        if self.INCLUDE_NEW_REFRESH_TOKEN:  # already consumed in validate_token_request
            with self.server.owner._lock:
                refresh_token.refresh_revoked = True


class _BearerValidator(BearerTokenValidator):
    def __init__(self, owner: OAuthServer) -> None:
        super().__init__()
        self.owner = owner

    def authenticate_token(self, token_string: str) -> _Token | None:
        with self.owner._lock:
            return self.owner._by_access.get(token_string)


# --- HTTP: a threaded standard-library server routing to the three endpoints ---


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    oauth: OAuthServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def _dispatch(self, method: str) -> None:
        oauth = self.server.oauth
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        request = _Request(method, oauth.base_url + self.path, self.headers, query, body)
        route = {
            ("GET", "/authorize"): oauth._authorize,
            ("POST", "/token"): oauth._token,
            ("GET", "/api/me"): oauth._me,
        }.get((method, path))
        try:
            status, payload, headers = route(request) if route else (404, "not found", [])
        except Exception:  # a bug here must be visible in the test, not a dropped connection
            status, payload, headers = 500, traceback.format_exc(), []
        data = (json.dumps(payload) if isinstance(payload, dict) else payload).encode()
        self.send_response(status)
        for name, value in [*headers, ("Content-Length", str(len(data)))]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class OAuthServer:
    """An OAuth 2 provider on ``http://127.0.0.1:<free port>``; see the module docstring."""

    def __init__(
        self,
        *,
        client_id: str = "leadmesh-test",
        client_secret: str = "test-client-secret",
        redirect_uris: list[str] | None = None,
        scopes: tuple[str, ...] = ("contacts.read", "contacts.write"),
        access_token_lifetime: int = 3600,
        rotate_refresh_tokens: bool = True,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.scopes = tuple(scopes)
        self.access_token_lifetime = access_token_lifetime  # 0: tokens are born expired
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.refresh_delay: float = 0.0  # seconds slept inside each refresh grant
        self.deny_next: bool = False  # next valid /authorize answers error=access_denied
        self._client = _Client(client_id, client_secret, redirect_uris, self.scopes)
        self._lock = threading.Lock()
        self._codes: dict[str, _AuthCode] = {}
        self._by_access: dict[str, _Token] = {}
        self._by_refresh: dict[str, _Token] = {}
        self._token_requests: list[dict[str, Any]] = []
        self._refresh_count = 0
        self._auth = _AuthServer(self)
        self._auth.register_grant(_AuthorizationCodeGrant, [_S256Required(required=True)])
        refresh_grant = type(
            "RefreshTokenGrant",
            (_RefreshTokenGrant,),
            {"INCLUDE_NEW_REFRESH_TOKEN": rotate_refresh_tokens},
        )
        self._auth.register_grant(refresh_grant)
        self._protector = ResourceProtector()
        self._protector.register_token_validator(_BearerValidator(self))
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base_url: str | None = None

    # --- lifecycle ---

    def start(self) -> Self:
        if self._httpd is not None:
            raise RuntimeError("OAuthServer already started")
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.oauth = self
        self._base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
        if not is_secure_transport(self._base_url):
            httpd.server_close()
            raise RuntimeError("this authlib refuses http on loopback; upgrade authlib")
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- addresses (available once started) ---

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("OAuthServer not started")
        return self._base_url

    @property
    def authorize_url(self) -> str:
        return f"{self.base_url}/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/me"

    # --- observability and controls for tests (all thread-safe) ---

    @property
    def token_requests(self) -> list[dict[str, Any]]:
        """Snapshot of every POST /token in arrival order: the form fields except client_secret
        and code_verifier, plus has_code_verifier, client_auth, and (once answered) status and
        error (None on success)."""
        with self._lock:
            return [dict(record) for record in self._token_requests]

    @property
    def refresh_count(self) -> int:
        """Successful refresh_token grants."""
        with self._lock:
            return self._refresh_count

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is expired from now on."""
        now = time.time()
        with self._lock:
            for token in self._by_access.values():
                token.expires_at = min(token.expires_at, now)

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token issued so far is invalid (the next refresh gets invalid_grant)."""
        with self._lock:
            for token in self._by_refresh.values():
                token.refresh_revoked = True

    # --- endpoints ---

    def _authorize(self, request: _Request) -> _Response:
        try:  # client, redirect_uri, response_type, scope and PKCE challenge: all authlib
            grant = self._auth.get_consent_grant(request, end_user=OWNER_ID)
        except OAuth2Error as error:
            return self._auth.handle_error_response(None, error)
        with self._lock:
            deny, self.deny_next = self.deny_next, False
        # Auto-consent; grant_user=None makes authlib redirect with error=access_denied.
        return self._auth.create_authorization_response(
            grant.request, grant_user=None if deny else OWNER_ID, grant=grant
        )

    def _token(self, request: _Request) -> _Response:
        form = request.form
        record: dict[str, Any] = {k: v for k, v in form.items() if k not in _SECRET_FIELDS}
        record.setdefault("grant_type", None)
        record["has_code_verifier"] = bool(form.get("code_verifier"))
        basic = (request.headers.get("Authorization") or "").lower().startswith("basic ")
        post = "client_secret" in form
        record["client_auth"] = _AUTH_METHODS[0] if basic else _AUTH_METHODS[1] if post else None
        with self._lock:
            self._token_requests.append(record)
        status, body, headers = self._auth.create_token_response(request)
        with self._lock:
            record["status"] = status
            record["error"] = body.get("error") if isinstance(body, dict) else None
        return status, body, headers

    def _me(self, request: _Request) -> _Response:
        try:
            token = self._protector.validate_request(None, self._auth.create_json_request(request))
        except OAuth2Error as error:
            # Missing header or another scheme gets the same answer as a bad token.
            if not isinstance(error, InvalidTokenError):
                error = InvalidTokenError()
            return self._auth.handle_response(*error())
        return 200, {"sub": token.user_id}, list(default_json_headers)
