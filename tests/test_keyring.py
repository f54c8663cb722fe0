from __future__ import annotations

import errno
import json
import os
import pickle
import stat
from pathlib import Path

import pytest

from lockkit import ConfigurationError
from lockkit.keys import keyring as keyring_module
from lockkit.keys.keyring import MAX_VERSION, Keyring, load_keyring

CRN = "crn:local:ws-k"


def test_save_is_0600_and_round_trips(tmp_path: Path) -> None:
    ring = Keyring.generate(CRN)
    p = tmp_path / "d" / "keyring.json"
    ring.save(p)
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert os.stat(p.parent).st_mode & 0o777 == 0o700
    again = Keyring.load(p)
    assert again.workspace_crn == CRN
    assert again.derive(1, ["x"]) == ring.derive(1, ["x"])
    assert again.derive(None, ["x"]) == ring.derive(None, ["x"])


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "keyring.json"
    Keyring.generate(CRN).save(p)
    before = p.read_bytes()
    with pytest.raises(ConfigurationError, match="refusing to overwrite"):
        Keyring.generate(CRN).save(p)
    assert p.read_bytes() == before


def test_loose_permissions_refused(tmp_path: Path) -> None:
    p = tmp_path / "keyring.json"
    Keyring.generate(CRN).save(p)
    os.chmod(p, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        Keyring.load(p)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_another_users_keyring_is_refused(tmp_path: Path) -> None:
    """A 0600 keyring owned by someone else (planted where ours should be) is refused, as ssh
    refuses another user's config. (Needs root to make such a file; CI runs as root.)"""
    p = tmp_path / "keyring.json"
    Keyring.generate(CRN).save(p)
    os.chown(p, 65534, 65534)
    with pytest.raises(ConfigurationError, match="belongs to another user \\(uid 65534"):
        Keyring.load(p)
    os.chown(p, os.geteuid(), os.getegid())
    assert Keyring.load(p).workspace_crn == CRN


def test_concurrent_rotations_lose_no_version(tmp_path: Path) -> None:
    """Eight `lockkit keys rotate` at once (processes: the real CLI): every one adds its own
    version. Without the lock, several would write "version 2" and all but one would vanish,
    with any value an app encrypted under a vanished one."""
    import subprocess
    import sys

    ring = tmp_path / "keyring.json"
    Keyring.generate(CRN).save(ring)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKKIT_")}
    env.update(LOCKKIT_WORKSPACE_CRN=CRN, LOCKKIT_KEYRING=str(ring))
    procs = [subprocess.Popen([sys.executable, "-m", "lockkit.cli", "keys", "rotate"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(int(o.split("version ")[1].split()[0]) for o, _ in outs) == list(range(2, 10))
    final = Keyring.load(ring)
    assert [v.version for v in final.versions()] == list(range(1, 10)) and final.primary == 9
    assert os.stat(ring).st_mode & 0o777 == 0o600


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="lockkit init"):
        Keyring.load(tmp_path / "nope.json")
    with pytest.raises(ConfigurationError, match="not a regular file"):
        d = tmp_path / "dir.json"
        d.mkdir(mode=0o700)
        Keyring.load(d)


def test_symlink_refused(tmp_path: Path) -> None:
    p = tmp_path / "keyring.json"
    Keyring.generate(CRN).save(p)
    link = tmp_path / "link.json"
    link.symlink_to(p)
    with pytest.raises(ConfigurationError, match="cannot read"):
        Keyring.load(link)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: "not json",
        lambda d: json.dumps({**d, "format": "other"}),
        lambda d: json.dumps({**d, "keys": []}),
        lambda d: json.dumps({**d, "primary": 7}),
        lambda d: json.dumps({**d, "index_key": "!!!"}),
        lambda d: json.dumps({**d, "keys": [{**d["keys"][0], "material": "AAAA"}]}),
        lambda d: json.dumps({**d, "keys": [d["keys"][0], d["keys"][0]]}),
        lambda d: json.dumps({k: v for k, v in d.items() if k != "workspace_crn"}),
        lambda d: json.dumps([d]),
        # a version no payload key id can name (they are at most 9 digits): values under it
        # would encrypt and never decrypt
        lambda d: json.dumps({**d, "primary": 1_000_000_000, "keys": [{**d["keys"][0], "version": 1_000_000_000}]}),
        lambda d: json.dumps({**d, "primary": True}),  # would write key id "True"
        lambda d: json.dumps({**d, "version": True}),
        # a member given twice: the first one's key material would be dropped by the next save
        lambda d: json.dumps(d)[:-1] + ', "keys": ' + json.dumps(d["keys"]) + "}",
        lambda d: json.dumps({**d, "retired": [2]}),  # unknown fields would be dropped by the next save
        lambda d: json.dumps({**d, "keys": [{**d["keys"][0], "note": "prod"}]}),
        lambda d: json.dumps({**d, "keys": [{**d["keys"][0], "created": 10**15}]}),
        lambda d: json.dumps({**d, "keys": [{**d["keys"][0], "created": True}]}),
        lambda d: json.dumps({**d, "keys": [{**d["keys"][0], "created": 1.5}]}),
        lambda d: json.dumps(d)[:-1].replace('"created": ', '"created": 1e999, "x": ', 1) + "}",
        lambda d: "[" * 100_000 + "]" * 100_000,
    ],
)
def test_malformed_keyring_is_an_error_never_a_new_key(tmp_path: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    good = json.loads(Keyring.generate(CRN).to_json())
    p = tmp_path / "keyring.json"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, mutate(good).encode())
    os.close(fd)
    before = p.read_bytes()
    with pytest.raises(ConfigurationError) as info:
        Keyring.load(p)
    assert good["keys"][0]["material"] not in str(info.value)
    assert p.read_bytes() == before


def test_rotation_stops_at_the_last_version_a_key_id_can_name(tmp_path: Path) -> None:
    ring = Keyring.generate(CRN)
    doc = json.loads(ring.to_json())
    doc["keys"][0]["version"] = doc["primary"] = MAX_VERSION
    full = Keyring.from_json(json.dumps(doc))
    with pytest.raises(ConfigurationError, match="beyond"):
        full.rotate()
    assert full.primary == MAX_VERSION


def test_save_is_durable_and_a_failed_write_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new file's directory is fsynced after the rename (a power cut would otherwise undo a
    rotation whose key already encrypted stored values); a full disk is a ConfigurationError,
    leaving the old keyring and no temporary file."""
    p = tmp_path / "keys" / "keyring.json"
    synced: list[bool] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(keyring_module.os, "fsync", recording_fsync)
    ring = Keyring.generate(CRN)
    ring.save(p)
    assert synced[-1] is True and False in synced  # the file, then its directory
    before = p.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keyring_module.os, "fsync", full_disk)
    ring.rotate()
    with pytest.raises(ConfigurationError, match="No space left on device"):
        ring.save(p, overwrite=True)
    assert p.read_bytes() == before
    assert sorted(x.name for x in p.parent.iterdir()) == ["keyring.json"]


def test_rotation_keeps_old_versions(tmp_path: Path) -> None:
    ring = Keyring.generate(CRN, now=100)
    old = ring.derive(1, ["c"])
    assert ring.rotate(now=200) == 2
    assert ring.primary == 2
    assert [(v.version, v.created, v.primary) for v in ring.versions()] == [(1, 100, False), (2, 200, True)]
    assert ring.derive(1, ["c"]) == old != ring.derive(2, ["c"])


def test_repr_and_pickle_never_show_material() -> None:
    ring = Keyring.generate(CRN)
    material = json.loads(ring.to_json())["keys"][0]["material"]
    assert material not in repr(ring)
    with pytest.raises(TypeError):
        pickle.dumps(ring)


def test_inline_json_wins(tmp_path: Path) -> None:
    ring = Keyring.generate(CRN)
    assert load_keyring(tmp_path / "absent.json", ring.to_json()).derive(1, ["a"]) == ring.derive(1, ["a"])
    with pytest.raises(ConfigurationError, match="LOCKKIT_KEYRING_JSON"):
        load_keyring(None, "{bad")
