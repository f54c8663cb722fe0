"""A short end-to-end demonstration on the embedded defaults (no Flask, no network).

Run with `make demo` (which runs `lockkit init --if-missing` first). It starts a throwaway
OpenID issuer on 127.0.0.1 (real RSA-signed JWTs, JWKS over HTTP), then: two users identify,
alice encrypts her records under her lock context, decrypts them, bob is refused, and alice
searches her encrypted data by exact value and by a word.
"""

from __future__ import annotations

import dataclasses
import json

from lockkit import Encryption, encrypted_column, encrypted_table, load_settings, matches
from lockkit.testing import LocalIssuer

users = encrypted_table(
    "users",
    email=encrypted_column("email").equality().free_text_search(),
    note=encrypted_column("note").free_text_search(),
    age=encrypted_column("age").data_type("int"),
)


def main() -> None:
    with LocalIssuer(audience="lockkit-demo") as idp:
        # lockkit.toml from `lockkit init`, plus the throwaway issuer as the trusted IdP
        settings = dataclasses.replace(load_settings(), issuers=(idp.issuer_config(),))
        client = Encryption([users], settings=settings)
        print(f"workspace {client.workspace_crn}, keyset {client.keyset!r}")
        print(f"identity provider (local, for the demo): {idp.issuer}\n")

        alice = client.lock_context().identify(idp.mint("alice")).unwrap()
        bob = client.lock_context().identify(idp.mint("bob")).unwrap()
        print("1. alice and bob identify with their JWTs and get CTS tokens:", alice, bob, sep="\n   ")

        rows = client.bulk_encrypt_models(
            [
                {"id": 1, "email": "alice@example.com", "note": "Dentist on Tuesday", "age": 34},
                {"id": 2, "email": "alice.work@example.com", "note": "Quarterly budget review", "age": 34},
            ],
            users,
        ).with_lock_context(alice).unwrap()
        print("\n2. alice's rows as the database stores them (no plaintext):")
        print("   " + json.dumps(rows[0])[:160] + " ...")

        plain = client.bulk_decrypt_models(rows, users).with_lock_context(alice).unwrap()
        print("\n3. alice decrypts her rows:")
        for r in plain:
            print(f"   {r}")

        denied = client.decrypt_model(rows[0], users).with_lock_context(bob)
        assert denied.failure is not None
        print(f"\n4. bob tries to decrypt alice's row: {denied.failure.type}: {denied.failure.message}")
        no_lc = client.decrypt(rows[0]["email"])
        assert no_lc.failure is not None
        print(f"   and without any lock context: {no_lc.failure.type}: {no_lc.failure.message}")

        eq = client.encrypt_query("alice@example.com", column=users.email, table=users,
                                  query_type="equality").with_lock_context(alice).unwrap()
        word = client.encrypt_query("budget", column=users.note, table=users).with_lock_context(alice).unwrap()
        bob_word = client.encrypt_query("budget", column=users.note, table=users).with_lock_context(bob).unwrap()
        print("\n5. search over ciphertext with identity-bound terms:")
        print(f"   alice: email = alice@example.com -> rows {[r['id'] for r in rows if matches(eq, r['email'])]}")
        print(f"   alice: note contains 'budget'     -> rows {[r['id'] for r in rows if matches(word, r['note'])]}")
        print(f"   bob:   note contains 'budget'     -> rows {[r['id'] for r in rows if matches(bob_word, r['note'])]}")
        assert not any(matches(bob_word, r["note"]) for r in rows)
        print("\nDone: only alice's identity opens or finds alice's data.")


if __name__ == "__main__":
    main()
