from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lockkit import ConfigurationError, Encryption, LockContext
from lockkit.config import load_settings, parse_crn, render_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "lockkit.toml"
    p.write_text(text)
    return p


def test_no_workspace_raises_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="lockkit init.*LOCKKIT_WORKSPACE_CRN"):
        load_settings(env={}, cwd=tmp_path)


def test_encryption_without_workspace_raises_at_construction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("LOCKKIT_WORKSPACE_CRN", "CS_WORKSPACE_CRN", "LOCKKIT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigurationError, match="no workspace is configured"):
        Encryption()
    with pytest.raises(ConfigurationError, match="no workspace is configured"):
        LockContext().identify("x.y.z")


def test_file_then_env_override(tmp_path: Path) -> None:
    cfg = write(tmp_path, render_config("crn:local:ws-file"))
    s = load_settings(cfg, env={})
    assert s.workspace_crn == "crn:local:ws-file"
    assert s.keyring_path == tmp_path / ".lockkit/keyring.json"
    assert (s.region, s.workspace_id) == ("local", "ws-file")
    s = load_settings(cfg, env={"LOCKKIT_WORKSPACE_CRN": "crn:eu-1:ws-env", "LOCKKIT_CTS_LIFETIME": "120",
                                "LOCKKIT_KEYSET": "tenant-a", "LOCKKIT_CTS_CLAIMS": "org_id, team"})
    assert (s.workspace_crn, s.cts_lifetime, s.keyset, s.cts_claims) == ("crn:eu-1:ws-env", 120, "tenant-a", ("org_id", "team"))


def test_reference_variable_is_honoured_and_ours_wins(tmp_path: Path) -> None:
    assert load_settings(env={"CS_WORKSPACE_CRN": "crn:ap-2:ws-cs"}, cwd=tmp_path).workspace_crn == "crn:ap-2:ws-cs"
    s = load_settings(env={"CS_WORKSPACE_CRN": "crn:ap-2:ws-cs", "LOCKKIT_WORKSPACE_CRN": "crn:local:ws-lk"}, cwd=tmp_path)
    assert s.workspace_crn == "crn:local:ws-lk"


def test_config_file_found_in_cwd_and_via_LOCKKIT_CONFIG(tmp_path: Path) -> None:
    write(tmp_path, 'workspace_crn = "crn:local:ws-cwd"\n')
    assert load_settings(env={}, cwd=tmp_path).workspace_crn == "crn:local:ws-cwd"
    other = tmp_path / "other.toml"
    other.write_text('workspace_crn = "crn:local:ws-other"\n')
    assert load_settings(env={"LOCKKIT_CONFIG": str(other)}, cwd=tmp_path).workspace_crn == "crn:local:ws-other"
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(env={"LOCKKIT_CONFIG": str(tmp_path / "missing.toml")}, cwd=tmp_path)


@pytest.mark.parametrize("crn", ["", "ws-1", "crn:local", "crn::ws", "crn:LOCAL:ws", "crn:local:ws 1", "arn:local:ws"])
def test_malformed_crn(crn: str) -> None:
    with pytest.raises(ConfigurationError, match="malformed"):
        parse_crn(crn)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('workspace_crn = "crn:local:ws"\nbogus = 1\n', "unknown key"),
        ('workspace_crn = "crn:local:ws"\n[cts]\nlifetime = 5\n', "out of range"),
        ('workspace_crn = "crn:local:ws"\n[cts]\nlifetime = 99999\n', "out of range"),
        ('workspace_crn = "crn:local:ws"\n[cts]\nlifetime = "soon"\n', "whole number"),
        ('workspace_crn = "crn:local:ws"\n[cts]\nclaims = ["sub"]\n', "may not list"),
        ('workspace_crn = "crn:local:ws"\nkeyset = "bad name!"\n', "keyset name"),
        ('workspace_crn = = "x"\n', "not valid TOML"),
        ('workspace_crn = 5\n', "must be a string"),
        ('workspace_crn = "crn:local:ws"\n[[issuers]]\nissuer = "https://i"\n', "audience"),
    ],
)
def test_invalid_config_is_a_clear_error(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        load_settings(write(tmp_path, text), env={})


def test_issuers_from_file_and_env(tmp_path: Path) -> None:
    cfg = write(tmp_path, render_config("crn:local:ws", issuers=[
        {"issuer": "https://a.example", "audience": ["app"], "jwks_uri": "https://a.example/jwks"}]))
    s = load_settings(cfg, env={"LOCKKIT_TRUSTED_ISSUER": "https://b.example", "LOCKKIT_TRUSTED_AUDIENCE": "app2"})
    assert [i.issuer for i in s.issuers] == ["https://a.example", "https://b.example"]
    assert s.issuers[1].jwks_uri == "https://b.example/.well-known/jwks.json"
    assert s.issuers[1].audiences == ("app2",)


def test_inline_keyring_env_wins_over_path(tmp_path: Path) -> None:
    s = load_settings(env={"LOCKKIT_WORKSPACE_CRN": "crn:local:ws", "LOCKKIT_KEYRING_JSON": "{}"}, cwd=tmp_path)
    assert s.keyring_path is None and s.keyring_json == "{}"
    assert "{}" not in repr(s)


def test_a_keyring_of_another_workspace_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys and payload headers name the keyring's workspace: two apps configured as different
    workspaces must not silently share one keyring (each would read the other's values)."""
    from lockkit import encrypted_column, encrypted_table
    from lockkit.config import Settings
    from lockkit.cts import build_token_service
    from lockkit.keys.keyring import Keyring

    monkeypatch.chdir(tmp_path)
    shared = Keyring.generate("crn:local:shared").to_json()
    users = encrypted_table("users", name=encrypted_column("name"))
    for crn in ("crn:local:tenant-a", "crn:local:tenant-b"):
        with pytest.raises(ConfigurationError, match="belongs to workspace 'crn:local:shared'.*names '" + crn):
            Encryption([users], settings=Settings(workspace_crn=crn, keyring_json=shared))
        with pytest.raises(ConfigurationError, match="belongs to workspace"):
            build_token_service(Settings(workspace_crn=crn, keyring_json=shared))
    path = tmp_path / "keyring.json"
    Keyring.generate("crn:local:shared").save(path)
    with pytest.raises(ConfigurationError, match=f"keyring \\({path}\\) belongs to workspace"):
        Encryption([users], settings=Settings(workspace_crn="crn:local:tenant-a", keyring_path=path))
    client = Encryption([users], settings=Settings(workspace_crn="crn:local:shared", keyring_json=shared))
    assert client.workspace_crn == "crn:local:shared"


# -- [openbao] ------------------------------------------------------------------------------
def _bao_settings(tmp_path: Path, table: str, env: dict[str, str] | None = None) -> Any:
    cfg = write(tmp_path, 'workspace_crn = "crn:local:ws-bao"\nkey_backend = "openbao"\n[openbao]\n' + table)
    return load_settings(cfg, env=env or {})


@pytest.mark.parametrize("addr", ["https://bao.example.com:8200", "http://127.0.0.1:8200", "http://localhost:8200",
                                  "http://[::1]:8200"])
def test_openbao_addr_https_or_loopback(tmp_path: Path, addr: str) -> None:
    assert _bao_settings(tmp_path, f'addr = "{addr}"\n').openbao.addr == addr


def test_openbao_plain_http_to_another_host_must_be_asked_for(tmp_path: Path) -> None:
    """Identity tokens and unwrapped data keys travel to OpenBao: never in the clear by accident."""
    with pytest.raises(ConfigurationError, match="plain http to another host.*LOCKKIT_OPENBAO_INSECURE_HTTP"):
        _bao_settings(tmp_path, 'addr = "http://bao.internal:8200"\n')
    assert _bao_settings(tmp_path, 'addr = "http://bao.internal:8200"\ninsecure_http = true\n').openbao.insecure_http
    env = {"LOCKKIT_OPENBAO_INSECURE_HTTP": "true"}
    assert _bao_settings(tmp_path, 'addr = "http://bao.internal:8200"\n', env).openbao.insecure_http
    for bad in ("ftp://bao.internal", "bao.internal:8200", "https://"):
        with pytest.raises(ConfigurationError, match="LOCKKIT_OPENBAO_ADDR"):
            _bao_settings(tmp_path, f'addr = "{bad}"\n')


@pytest.mark.parametrize(("line", "key"), [
    ('max_batch = "450"', "max_batch"), ("max_batch = 0", "max_batch"), ("addr = 5", "addr"),
    ("timeout = 0", "timeout"), ("timeout = inf", "timeout"), ("timeout = nan", "timeout"), ('timeout = "5"', "timeout"),
    ("retries = -3", "retries"), ("retries = true", "retries"), ("dek_cache_ttl = -1", "dek_cache_ttl"),
    ("backoff = 1e9", "backoff"), ('insecure_http = "yes please"', "insecure_http"), ("ca_cert = 3", "ca_cert"),
])
def test_openbao_values_are_checked(tmp_path: Path, line: str, key: str) -> None:
    """A wrong type or an absurd value is a ConfigurationError naming the key, at start-up, not
    a TypeError or a failure at the first call."""
    table = line + "\n" + ('addr = "https://bao.example.com"\n' if not line.startswith("addr") else "")
    with pytest.raises(ConfigurationError, match=key):
        _bao_settings(tmp_path, table)


@pytest.mark.parametrize(("env", "key"), [({"LOCKKIT_OPENBAO_TIMEOUT": "inf"}, "timeout"),
                                          ({"LOCKKIT_OPENBAO_RETRIES": "-1"}, "retries"),
                                          ({"LOCKKIT_OPENBAO_INSECURE_HTTP": "maybe"}, "INSECURE_HTTP")])
def test_openbao_env_values_are_checked(tmp_path: Path, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigurationError, match=key):
        _bao_settings(tmp_path, 'addr = "https://bao.example.com"\n', env)


@pytest.mark.parametrize("lifetime", ["900.9", "900.0", "true", '"abc"'])
def test_cts_lifetime_must_be_a_whole_number(tmp_path: Path, lifetime: str) -> None:
    cfg = write(tmp_path, f'workspace_crn = "crn:local:ws-x"\n[cts]\nlifetime = {lifetime}\n')
    with pytest.raises(ConfigurationError, match="whole number of seconds"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigurationError, match="whole number of seconds"):
        load_settings(write(tmp_path, 'workspace_crn = "crn:local:ws-x"\n'), env={"LOCKKIT_CTS_LIFETIME": "900.9"})
