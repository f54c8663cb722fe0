"""The Auth0 provider (``lockkit-auth0``): Auth0's configuration names and issuer shape, the
``audience`` authorization parameter, and both sign-out endpoints (``/v2/logout`` and
RP-Initiated Logout), with sign-in end to end against the same real OpenID provider as the
generic tests (issuer overridden with ``LOCKKIT_AUTH0_ISSUER``)."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from lockkit import ConfigurationError
from lockkit.plugins import identity_provider_classes, make_plugin_manager
from lockkit_auth0 import Auth0Provider
from lockkit_oidc import OIDCProvider

from .op_fixture import provider_of as _provider_of
from .op_fixture import unsealed_entry
from .op_fixture import APP_ORIGIN, API_AUDIENCE, WEB_CLIENT, OPServer, bearer, lockkit_app, op, sign_in, spa_access_token

__all__ = ["op"]  # fixture used by name

TENANT = {"AUTH0_DOMAIN": "example.eu.auth0.com", "AUTH0_CLIENT_ID": "abc123", "AUTH0_CLIENT_SECRET": "shh"}


def auth0_config(server: OPServer, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "LOCKKIT_AUTH0_ISSUER": server.issuer,
        "AUTH0_CLIENT_ID": WEB_CLIENT,
        "AUTH0_CLIENT_SECRET": server.web_secret,
        "AUTH0_AUDIENCE": API_AUDIENCE,
        "LOCKKIT_AUTH0_AUTHORIZE_PARAMS": {"prompt": "consent"},  # offline_access on a spec-strict OP
    }
    config.update(extra)
    return config


def provider_of(app: Flask) -> Auth0Provider:
    provider: Auth0Provider = _provider_of(app, Auth0Provider)
    return provider


def stored_tokens(app: Flask, client: FlaskClient) -> dict[str, Any] | None:
    return unsealed_entry(app, client, "_lockkit_auth0", "lockkit-auth0-tokens")


def test_entry_point_registers_the_provider() -> None:
    cls = identity_provider_classes(make_plugin_manager())["auth0"]
    assert cls is Auth0Provider and issubclass(cls, OIDCProvider)


def test_auth0_configuration_names() -> None:
    provider = Auth0Provider.from_config({**TENANT, "AUTH0_AUDIENCE": "https://api.example"})
    s = provider.settings
    assert s.issuer == "https://example.eu.auth0.com/"  # Auth0's issuer ends with a slash
    assert s.discovery_url == "https://example.eu.auth0.com/.well-known/openid-configuration"
    assert (s.client_id, s.client_secret, s.audience) == ("abc123", "shh", "https://api.example")
    assert s.authorize_params == {"audience": "https://api.example"}
    assert provider.namespace == "https://example.eu.auth0.com/"
    assert provider.logout_mode == "auto" and "shh" not in repr(provider)
    # the LOCKKIT_AUTH0_* spelling wins; a URL-looking domain is accepted
    other = Auth0Provider.from_config(
        {"LOCKKIT_AUTH0_DOMAIN": "https://t.us.auth0.com/", "LOCKKIT_AUTH0_CLIENT_ID": "x", "AUTH0_CLIENT_ID": "y"}
    )
    assert other.settings.issuer == "https://t.us.auth0.com/" and other.settings.client_id == "x"
    assert other.settings.client_secret is None and other.settings.audience is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"AUTH0_CLIENT_ID": "x"}, "AUTH0_DOMAIN"),
        ({"AUTH0_DOMAIN": "example.auth0.com"}, "AUTH0_CLIENT_ID"),
        ({**TENANT, "AUTH0_DOMAIN": "example.auth0.com/evil"}, "AUTH0_DOMAIN"),
        ({**TENANT, "AUTH0_DOMAIN": "http://example.auth0.com"}, "AUTH0_DOMAIN"),
        ({**TENANT, "LOCKKIT_AUTH0_LOGOUT": "sometimes"}, "LOCKKIT_AUTH0_LOGOUT"),
        ({**TENANT, "LOCKKIT_AUTH0_ISSUER": "http://auth.example.com/"}, "LOCKKIT_AUTH0_ISSUER"),
    ],
)
def test_auth0_configuration_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Auth0Provider.from_config(config)


def test_v2_logout_url_shape() -> None:
    provider = Auth0Provider.from_config({**TENANT, "LOCKKIT_AUTH0_LOGOUT": "v2"})
    assert provider.v2_logout_url("https://app.example/bye") == (
        "https://example.eu.auth0.com/v2/logout?client_id=abc123&returnTo=https%3A%2F%2Fapp.example%2Fbye"
    )


def test_sign_in_end_to_end_against_an_op(op: OPServer) -> None:
    app = lockkit_app("auth0", **auth0_config(op))
    client = app.test_client()
    start = client.get("/lockkit/auth0/login", query_string={"next": "/notes"})
    params = parse_qs(urlsplit(start.headers["Location"]).query)
    assert params["audience"] == [API_AUDIENCE] and params["code_challenge_method"] == ["S256"]
    assert params["redirect_uri"] == [f"{APP_ORIGIN}/lockkit/auth0/callback"]
    done = sign_in(client, "alice", provider="auth0")
    assert done.status_code == 302 and done.headers["Location"] == "/notes"
    stored = stored_tokens(app, client)
    assert stored is not None and stored["sub"] == "alice" and stored["rt"]
    page = client.get("/notes")
    assert page.status_code == 200 and page.get_json() == {"sub": "alice", "plain": "note of alice", "locked": True}

    token = spa_access_token(op, "alice")["access_token"]
    me = app.test_client().get("/api/me", headers=bearer(token))
    assert me.status_code == 200 and me.get_json() == {"sub": "alice"}


def _sign_out(app: Flask, client: FlaskClient) -> str:
    csrf = client.get("/logout-form").get_data(as_text=True)
    out = client.post("/lockkit/auth0/logout", data={"csrf": csrf, "next": "/bye"})
    assert out.status_code == 302
    assert stored_tokens(app, client) is None and client.get("/notes").status_code == 302
    return str(out.headers["Location"])


def test_sign_out_uses_rp_initiated_logout_when_discovery_advertises_it(op: OPServer) -> None:
    app = lockkit_app("auth0", **auth0_config(op))
    client = app.test_client()
    sign_in(client, "bob", provider="auth0")
    id_token = stored_tokens(app, client)["id"]  # type: ignore[index]
    assert jwt.decode(id_token, options={"verify_signature": False})["aud"] == WEB_CLIENT
    target = urlsplit(_sign_out(app, client))
    assert f"{target.scheme}://{target.netloc}{target.path}" == op.discovery()["end_session_endpoint"]
    assert parse_qs(target.query) == {
        "id_token_hint": [id_token], "client_id": [WEB_CLIENT], "post_logout_redirect_uri": [f"{APP_ORIGIN}/bye"],
    }


def test_sign_out_with_v2_logout(op: OPServer) -> None:
    app = lockkit_app("auth0", **auth0_config(op, LOCKKIT_AUTH0_LOGOUT="v2"))
    client = app.test_client()
    sign_in(client, "carol", provider="auth0")
    assert _sign_out(app, client) == (
        f"{op.issuer}/v2/logout?client_id={WEB_CLIENT}&returnTo=http%3A%2F%2Flocalhost%2Fbye"
    )


def _closed_issuer() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


def test_auto_logout_falls_back_to_v2_without_discovery(op: OPServer) -> None:
    issuer = _closed_issuer()
    app = lockkit_app("auth0", **auth0_config(op, LOCKKIT_AUTH0_ISSUER=issuer, LOCKKIT_AUTH0_HTTP_TIMEOUT=2))
    client = app.test_client()
    csrf = client.get("/logout-form").get_data(as_text=True)
    out = client.post("/lockkit/auth0/logout", data={"csrf": csrf, "next": "/"})
    assert out.headers["Location"] == f"{issuer}v2/logout?client_id={WEB_CLIENT}&returnTo=http%3A%2F%2Flocalhost%2F"


def test_oidc_logout_mode_without_end_session_signs_out_locally() -> None:
    provider = Auth0Provider.from_config(
        {**TENANT, "LOCKKIT_AUTH0_LOGOUT": "oidc", "LOCKKIT_AUTH0_HTTP_TIMEOUT": 2, "LOCKKIT_AUTH0_ISSUER": _closed_issuer()}
    )
    assert provider.end_session_url("hint", "https://app.example/") is None
    assert provider.v2_logout_url("https://app.example/").startswith(provider.settings.issuer + "v2/logout?")
