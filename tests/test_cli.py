from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lockkit import Encryption, LockContext, encrypted_column, encrypted_table
from lockkit.cli import main
from lockkit.testing import LocalIssuer


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.startswith("LOCKKIT_") or var == "CS_WORKSPACE_CRN":
            monkeypatch.delenv(var)
    return tmp_path


def test_init_writes_config_and_0600_keyring(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--workspace-crn", "crn:local:ws-cli"]) == 0
    assert 'workspace_crn = "crn:local:ws-cli"' in (workdir / "lockkit.toml").read_text()
    ring = workdir / ".lockkit" / "keyring.json"
    assert os.stat(ring).st_mode & 0o777 == 0o600
    out = capsys.readouterr().out
    assert "wrote keyring" in out and "material" not in out


def test_init_refuses_to_overwrite_keyring(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    ring = workdir / ".lockkit" / "keyring.json"
    before = ring.read_bytes()
    assert main(["init"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert ring.read_bytes() == before
    assert main(["init", "--if-missing"]) == 0
    assert ring.read_bytes() == before


def test_init_refuses_a_different_workspace(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--workspace-crn", "crn:local:ws-a"]) == 0
    assert main(["init", "--workspace-crn", "crn:local:ws-b"]) == 1
    assert "already configures workspace crn:local:ws-a" in capsys.readouterr().err


def test_init_never_writes_through_a_symlink(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = workdir / "elsewhere.toml"
    (workdir / "lockkit.toml").symlink_to(target)  # dangling: exists() is False
    assert main(["init"]) == 1
    assert "symlink" in capsys.readouterr().err and not target.exists()
    assert not (workdir / ".lockkit").exists()


def test_init_on_a_full_disk_leaves_nothing_half_written(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails (here: no space at fsync) is a clear error and leaves no empty
    lockkit.toml behind (which made the next init fail with "no workspace is configured")."""
    import errno

    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(["init", "--workspace-crn", "crn:local:ws-full"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in workdir.iterdir()) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(["init", "--workspace-crn", "crn:local:ws-full"]) == 0
    assert 'workspace_crn = "crn:local:ws-full"' in (workdir / "lockkit.toml").read_text()


def test_init_refuses_a_workspace_the_environment_overrides(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The keyring must belong to the workspace the app will run as (the environment wins over
    the file), so init stops instead of writing one the app would refuse."""
    monkeypatch.setenv("LOCKKIT_WORKSPACE_CRN", "crn:local:ws-bbb")
    assert main(["init", "--workspace-crn", "crn:local:ws-aaa"]) == 1
    err = capsys.readouterr().err
    assert "configures workspace crn:local:ws-aaa" in err and "crn:local:ws-bbb" in err
    assert not (workdir / ".lockkit" / "keyring.json").exists()
    monkeypatch.delenv("LOCKKIT_WORKSPACE_CRN")
    assert main(["init"]) == 0  # the file's workspace, nothing overriding it


def test_keys_list_and_rotate(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    secret = (workdir / ".lockkit" / "keyring.json").read_text()
    capsys.readouterr()
    assert main(["keys", "rotate"]) == 0
    assert "version 2 is now primary" in capsys.readouterr().out
    assert os.stat(workdir / ".lockkit" / "keyring.json").st_mode & 0o777 == 0o600
    assert main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()[2:]]
    assert [line[0] for line in lines] == ["1", "2"] and lines[1][-1] == "*"
    for word in secret.split('"'):
        if len(word) > 40:
            assert word not in out


def test_keys_commands_without_init_explain(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "list"]) == 1
    assert "lockkit init" in capsys.readouterr().err


def test_zero_code_config_flow(workdir: Path, monkeypatch: pytest.MonkeyPatch, idp: LocalIssuer) -> None:
    """`lockkit init` + env naming the issuer: Encryption() and LockContext() need no arguments."""
    assert main(["init"]) == 0
    monkeypatch.setenv("LOCKKIT_TRUSTED_ISSUER", idp.issuer)
    monkeypatch.setenv("LOCKKIT_TRUSTED_AUDIENCE", idp.audience)
    users = encrypted_table("users", email=encrypted_column("email"))
    client = Encryption([users])
    lc = LockContext().identify(idp.mint("carol")).unwrap()
    enc = client.encrypt("c@example.com", column=users.email, table=users).with_lock_context(lc).unwrap()
    assert client.decrypt(enc).with_lock_context(lc).unwrap() == "c@example.com"
    # a keyring rotated on disk is used by a client built afterwards; old values still open
    assert main(["keys", "rotate"]) == 0
    from lockkit.cts import _defaults

    _defaults.clear()
    client2 = Encryption([users])
    lc2 = LockContext().identify(idp.mint("carol")).unwrap()
    enc2 = client2.encrypt("new", column=users.email, table=users).with_lock_context(lc2).unwrap()
    assert enc2["kid"] == "2"
    assert client2.decrypt(enc).with_lock_context(lc2).unwrap() == "c@example.com"
    _defaults.clear()


def test_console_script_runs(workdir: Path) -> None:
    exe = Path(sys.executable).with_name("lockkit")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "init" in proc.stdout
