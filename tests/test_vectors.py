"""Golden vectors: payloads written by lockkit 0.1 (format v1) must decrypt forever.

``tests/vectors/payload_v1.json`` was generated once by ``make_vectors.py`` from fixed keys; it
is never regenerated. If this test fails, a change broke stored data.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from lockkit import Encryption, LockContext
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.keys.keyring import Keyring
from lockkit.keys.local import LocalKeyService

from .vectors.make_vectors import TABLE, python_value

DOC = json.loads((Path(__file__).parent / "vectors" / "payload_v1.json").read_text())


def _client() -> tuple[Encryption, LockContext]:
    roots = {int(v): base64.b64decode(k) for v, k in DOC["root_keys"].items()}
    ring = Keyring(DOC["workspace_crn"], roots, {v: 0 for v in roots}, max(roots), base64.b64decode(DOC["index_key"]))
    cts = EmbeddedTokenService(workspace_crn=DOC["workspace_crn"], keyring=ring, verifiers=[])
    client = Encryption([TABLE], key_service=LocalKeyService(ring, cts.verifier()), token_service=cts)
    ident = DOC["identity"]
    lc = LockContext(cts_token=cts.mint({"sub": ident["sub"]}, namespace=ident["namespace"]))
    return client, lc


@pytest.mark.parametrize("vector", DOC["vectors"], ids=lambda v: f"{v['field']}-{'locked' if v['locked'] else 'plain'}")
def test_golden_vector_decrypts(vector: dict[str, Any]) -> None:
    client, lc = _client()
    op = client.decrypt(vector["payload"])
    if vector["locked"]:
        op = op.with_lock_context(lc)
    got = op.unwrap()
    want = python_value(vector["expected"])
    assert type(got) is type(want)
    assert got == want


def test_golden_vectors_cover_both_key_versions_and_lock_states() -> None:
    kids = {(v["payload"]["kid"], v["locked"]) for v in DOC["vectors"]}
    assert kids == {("1", False), ("2", True)}


@pytest.mark.parametrize("vector", [v for v in DOC["vectors"] if "hm" in v["payload"]], ids=lambda v: str(v["locked"]))
def test_golden_search_terms_are_stable(vector: dict[str, Any]) -> None:
    client, lc = _client()
    op = client.encrypt_query(python_value(vector["expected"]), column="email", table=TABLE)
    if vector["locked"]:
        op = op.with_lock_context(lc)
    term = op.unwrap()
    assert term["hm"] == vector["payload"]["hm"]
    assert term["bf"] == vector["payload"]["bf"]
