"""Generate golden payload vectors. Run once per payload format version; NEVER regenerate an
existing file: the point of the vectors is that stored data written by an old release still
decrypts. Usage: python tests/vectors/make_vectors.py tests/vectors/payload_v1.json
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys

from lockkit import Encryption, encrypted_column, encrypted_table
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.keys.keyring import Keyring
from lockkit.keys.local import LocalKeyService

WORKSPACE = "crn:local:ws-vectors"
NAMESPACE = "https://idp.vectors.test"

TABLE = encrypted_table(
    "people",
    email=encrypted_column("email").equality().free_text_search(),
    age=encrypted_column("age").data_type("int"),
    score=encrypted_column("score").data_type("float"),
    active=encrypted_column("active").data_type("bool"),
    born=encrypted_column("born").data_type("date"),
    seen=encrypted_column("seen").data_type("datetime"),
    doc=encrypted_column("doc").data_type("json"),
)

VALUES = [
    ("email", {"type": "text", "value": "Ada.Lovelace@example.com"}),
    ("email", {"type": "text", "value": "żółć — ünïcödé ✓"}),
    ("age", {"type": "int", "value": 36}),
    ("age", {"type": "int", "value": -(2**70)}),
    ("score", {"type": "float", "value": 3.25}),
    ("active", {"type": "bool", "value": True}),
    ("born", {"type": "date", "value": "1815-12-10"}),
    ("seen", {"type": "datetime", "value": "2026-11-29T10:15:00.123456+01:00"}),
    ("doc", {"type": "json", "value": {"tags": ["a", "b"], "n": 1, "nested": {"ok": None}}}),
]


def python_value(spec: dict) -> object:
    t, v = spec["type"], spec["value"]
    if t == "date":
        return dt.date.fromisoformat(v)
    if t == "datetime":
        return dt.datetime.fromisoformat(v)
    return v


def main(path: str) -> None:
    from lockkit import LockContext

    vectors = []
    for locked in (False, True):
        # unlocked vectors under root key version 1, locked ones under version 2
        ring = Keyring(
            WORKSPACE,
            {1: bytes(range(32)), 2: bytes(range(32, 64))},
            {1: 1700000000, 2: 1750000000},
            2 if locked else 1,
            bytes(range(64, 96)),
        )
        cts = EmbeddedTokenService(workspace_crn=WORKSPACE, keyring=ring, verifiers=[])
        client = Encryption([TABLE], key_service=LocalKeyService(ring, cts.verifier()), token_service=cts)
        lc = LockContext(cts_token=cts.mint({"sub": "user_vector"}, namespace=NAMESPACE))
        for field, spec in VALUES:
            op = client.encrypt(python_value(spec), column=field, table=TABLE)
            if locked:
                op = op.with_lock_context(lc)
            vectors.append({"field": field, "locked": locked, "expected": spec, "payload": op.unwrap()})
    doc = {
        "format": "lockkit payload vectors",
        "payload_version": 1,
        "workspace_crn": WORKSPACE,
        "identity": {"sub": "user_vector", "namespace": NAMESPACE},
        "root_keys": {"1": base64.b64encode(bytes(range(32))).decode(), "2": base64.b64encode(bytes(range(32, 64))).decode()},
        "index_key": base64.b64encode(bytes(range(64, 96))).decode(),
        "vectors": vectors,
    }
    with open(path, "x") as fh:  # "x": refuse to overwrite existing vectors
        json.dump(doc, fh, indent=1, ensure_ascii=False)
        fh.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
