"""Property tests: typed round trips through encrypt/decrypt under a lock context, and the
search-term invariants (deterministic per identity, NFC-stable, no false negatives).

Hypothesis and function-scoped fixtures don't mix, so the client here is built once per
module from the session-scoped ``idp``."""

from __future__ import annotations

import datetime as dt
import math
import struct
import unicodedata
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockkit import (
    EncryptedTable,
    Encryption,
    LockContext,
    Operation,
    encrypted_column,
    encrypted_table,
    matches,
)
from lockkit.cts.embedded import EmbeddedTokenService
from lockkit.keys.keyring import Keyring
from lockkit.keys.local import LocalKeyService
from lockkit.oidc import OIDCVerifier
from lockkit.search import words as index_words
from lockkit.testing import LocalIssuer

WORKSPACE = "crn:local:ws-properties"
PROPS = settings(max_examples=60, deadline=None)


@dataclass(frozen=True)
class Env:
    client: Encryption
    table: EncryptedTable
    alice: LockContext
    bob: LockContext


@pytest.fixture(scope="module")
def env(idp: LocalIssuer) -> Env:
    keyring = Keyring.generate(WORKSPACE)
    cts = EmbeddedTokenService(
        workspace_crn=WORKSPACE, keyring=keyring, verifiers=[OIDCVerifier(idp.issuer_config())]
    )
    table = encrypted_table(
        "things",
        text=encrypted_column("text").equality().free_text_search(),
        integer=encrypted_column("integer").data_type("int").equality(),
        real=encrypted_column("real").data_type("float"),
        real_eq=encrypted_column("real_eq").data_type("float").equality(),
        flag=encrypted_column("flag").data_type("bool"),
        day=encrypted_column("day").data_type("date").equality(),
        moment=encrypted_column("moment").data_type("datetime"),
        doc=encrypted_column("doc").data_type("json"),
    )
    client = Encryption([table], key_service=LocalKeyService(keyring, cts.verifier()), token_service=cts)

    def who(sub: str) -> LockContext:
        return LockContext(token_service=cts).identify(idp.mint(sub, ttl=3600)).unwrap()

    return Env(client, table, who("alice"), who("bob"))


def _sealed(op: Operation[dict[str, Any] | None]) -> dict[str, Any]:
    """The payload of an encrypt operation that must produce one."""
    payload = op.unwrap()
    assert payload is not None
    return payload


def _round_trip(env: Env, column: str, value: Any) -> Any:
    payload = env.client.encrypt(value, column=column, table=env.table).with_lock_context(env.alice).unwrap()
    if value is None:  # None (JSON null too) stays None: nothing is encrypted
        assert payload is None
    else:
        assert payload is not None and payload["lc"] == ["sub"]
    return env.client.decrypt(payload).with_lock_context(env.alice).unwrap()


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (floats by bits: -0.0 and NaN included)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, dt.datetime):
        return bool(a == b and a.utcoffset() == b.utcoffset())
    return bool(a == b)


# -- round trips -----------------------------------------------------------------------------


@PROPS
@given(st.text())
def test_text_round_trips(env: Env, value: str) -> None:
    back = _round_trip(env, "text", value)
    assert type(back) is str and back == value


@PROPS
@given(st.integers() | st.integers(min_value=-(2**4096), max_value=2**4096))
def test_int_round_trips(env: Env, value: int) -> None:
    back = _round_trip(env, "integer", value)
    assert type(back) is int and back == value


@PROPS
@given(st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, math.nan, -math.nan]))
def test_float_round_trips_bit_for_bit(env: Env, value: float) -> None:
    back = _round_trip(env, "real", value)
    assert type(back) is float
    if math.isnan(value):
        assert math.isnan(back)
    else:
        assert back == value
    assert math.copysign(1.0, back) == math.copysign(1.0, value)
    assert struct.pack(">d", back) == struct.pack(">d", value)


@PROPS
@given(st.floats(allow_nan=False))
def test_float_with_equality_index_round_trips_and_is_found(env: Env, value: float) -> None:
    payload = _sealed(env.client.encrypt(value, column="real_eq", table=env.table).with_lock_context(env.alice))
    back = env.client.decrypt(payload).with_lock_context(env.alice).unwrap()
    assert struct.pack(">d", back) == struct.pack(">d", value)
    assert _eq_term(env, "real_eq", value, env.alice) == payload["hm"]


@PROPS
@given(st.booleans())
def test_bool_round_trips(env: Env, value: bool) -> None:
    assert _round_trip(env, "flag", value) is value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=25,
)


@PROPS
@given(json_values)
def test_json_round_trips(env: Env, value: Any) -> None:
    back = _round_trip(env, "doc", value)
    assert _same(back, value), (value, back)


@PROPS
@given(st.dates())
def test_date_round_trips(env: Env, value: dt.date) -> None:
    back = _round_trip(env, "day", value)
    assert type(back) is dt.date and back == value


fixed_offsets = st.builds(
    dt.timezone,
    st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23, minutes=59)),
)


@PROPS
@given(st.datetimes() | st.datetimes(timezones=fixed_offsets | st.just(dt.timezone.utc)))
def test_datetime_round_trips(env: Env, value: dt.datetime) -> None:
    back = _round_trip(env, "moment", value)
    assert type(back) is dt.datetime
    assert back == value
    assert (back.tzinfo is None) == (value.tzinfo is None)
    assert back.utcoffset() == value.utcoffset()
    assert back.replace(tzinfo=None) == value.replace(tzinfo=None)  # same wall time, not just instant


@PROPS
@given(st.lists(st.text(max_size=20) | st.none(), max_size=20))
def test_bulk_round_trips_in_order(env: Env, values: list[str | None]) -> None:
    enc = env.client.bulk_encrypt(values, column="text", table=env.table).with_lock_context(env.alice).unwrap()
    dec = env.client.bulk_decrypt([r.unwrap() for r in enc]).with_lock_context(env.alice).unwrap()
    assert [r.unwrap() for r in dec] == values


# -- search terms ----------------------------------------------------------------------------


def _eq_term(env: Env, column: str, value: Any, lc: LockContext) -> str:
    op = env.client.encrypt_query(value, column=column, table=env.table, query_type="equality")
    return str(op.with_lock_context(lc).unwrap()["hm"])


@PROPS
@given(st.text())
def test_equality_terms_are_deterministic_per_identity(env: Env, value: str) -> None:
    payload = _sealed(env.client.encrypt(value, column="text", table=env.table).with_lock_context(env.alice))
    term = _eq_term(env, "text", value, env.alice)
    assert term == _eq_term(env, "text", value, env.alice) == payload["hm"]
    assert matches({"hm": term}, payload)
    assert term != _eq_term(env, "text", value, env.bob)


@PROPS
@given(st.text(), st.text())
def test_different_texts_get_different_terms(env: Env, a: str, b: str) -> None:
    same = unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)
    assert (_eq_term(env, "text", a, env.alice) == _eq_term(env, "text", b, env.alice)) is same


@PROPS
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1))
def test_nfc_equivalent_text_gets_the_same_term(env: Env, value: str) -> None:
    nfc, nfd = unicodedata.normalize("NFC", value), unicodedata.normalize("NFD", value)
    term = _eq_term(env, "text", nfc, env.alice)
    assert _eq_term(env, "text", nfd, env.alice) == term == _eq_term(env, "text", value, env.alice)
    stored = _sealed(env.client.encrypt(nfd, column="text", table=env.table).with_lock_context(env.alice))
    assert matches({"hm": term}, stored)


@PROPS
@given(st.integers() | st.integers(min_value=-(2**300), max_value=2**300), st.dates())
def test_typed_equality_terms_are_deterministic(env: Env, number: int, day: dt.date) -> None:
    p = _sealed(env.client.encrypt(number, column="integer", table=env.table).with_lock_context(env.alice))
    assert _eq_term(env, "integer", number, env.alice) == p["hm"]
    assert _eq_term(env, "integer", number + 1, env.alice) != p["hm"]
    d = _sealed(env.client.encrypt(day, column="day", table=env.table).with_lock_context(env.alice))
    assert _eq_term(env, "day", day, env.alice) == d["hm"]


@pytest.mark.parametrize(("stored", "query"), [
    ("İstanbul", "İst"), ("İZMİR", "İzm"), ("नमस्ते दुनिया", "मस्ते"), ("नमस्ते दुनिया", "दुनि"),
    ("สวัสดีครับ", "วัสดี"), ("15 Μαΐου", "αΐου"), ("ﬁnance", "fin"), ("Straße", "STRASS"),
])
def test_fragments_match_in_scripts_with_combining_marks(env: Env, stored: str, query: str) -> None:
    """Combining marks (vowel signs, viramas, the dot case folding gives "İ") are part of their
    word: a fragment of three or more characters finds it (no false negatives)."""
    payload = _sealed(env.client.encrypt(stored, column="text", table=env.table).with_lock_context(env.alice))
    assert _match(env, query, payload, env.alice)


def _match(env: Env, word: str, payload: dict[str, Any], lc: LockContext) -> bool:
    op = env.client.encrypt_query(word, column="text", table=env.table, query_type="match")
    return matches(op.with_lock_context(lc).unwrap(), payload)


@PROPS
@given(st.data())
def test_any_word_of_three_or_more_chars_matches_its_text(env: Env, data: st.DataObject) -> None:
    """No false negatives, whatever the text (words as the index sees them: NFKC, casefolded)."""
    text = data.draw(st.text(min_size=3))
    words = [w for w in index_words(text) if len(w) >= 3]
    if not words:
        text = text + " " + data.draw(st.from_regex(r"[A-Za-z0-9_]{3,12}", fullmatch=True))
        words = [w for w in index_words(text) if len(w) >= 3]
    payload = _sealed(env.client.encrypt(text, column="text", table=env.table).with_lock_context(env.alice))
    word = data.draw(st.sampled_from(words))
    assert _match(env, word, payload, env.alice)


sentence_words = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_éüßøåçñ漢字αβγДж", min_size=3,
            max_size=12),
    min_size=1, max_size=8,
)


@PROPS
@given(sentence_words, st.sampled_from([" ", ", ", " - ", "\n", ". "]), st.data())
def test_a_word_as_typed_matches_its_text(env: Env, words: list[str], sep: str, data: st.DataObject) -> None:
    """The user's own spelling (any case, composed or decomposed) finds the text."""
    text = sep.join(words)
    payload = _sealed(env.client.encrypt(text, column="text", table=env.table).with_lock_context(env.alice))
    word = data.draw(st.sampled_from(words))
    query = data.draw(st.sampled_from([word, word.upper(), word.lower(), unicodedata.normalize("NFD", word)]))
    assert _match(env, query, payload, env.alice)


@PROPS
@given(sentence_words)
def test_bobs_match_terms_never_hit_alices_text(env: Env, words: list[str]) -> None:
    text = " ".join(words)
    payload = _sealed(env.client.encrypt(text, column="text", table=env.table).with_lock_context(env.alice))
    assert not any(_match(env, w, payload, env.bob) for w in words[:3])
    assert not matches({"hm": _eq_term(env, "text", text, env.bob)}, payload)


_normalize = unicodedata.normalize


def _longest_non_starter_run(text: str) -> int:
    longest = run = 0
    for c in _normalize("NFKD", text):
        run = run + 1 if unicodedata.combining(c) else 0
        longest = max(longest, run)
    return longest


@pytest.mark.parametrize("attack", [
    "a" + "\u0301\u0316" * 5000,  # alternating classes 230 / 220: insertion sort is quadratic
    "\u0f73" * 5000,  # a starter (class 0) whose decomposition is two non-starters
    "x\u0344" * 2 + "\u0344" * 5000,  # one character, two non-starters
])
def test_terms_never_normalise_long_runs_of_combining_marks(
    env: Env, attack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unicode normalisation reorders runs of combining marks with an insertion sort: 64,000
    such characters took 2 s to index, a megabyte minutes. What the index normalises has runs
    of at most 30 non-starters (UAX #15 Stream-Safe Text Format); the value still round-trips
    and its own fragments still find it."""
    real = unicodedata.normalize
    seen: list[int] = []

    def checked(form: str, text: str) -> str:
        seen.append(_longest_non_starter_run(text))
        return real(form, text)

    monkeypatch.setattr(unicodedata, "normalize", checked)
    query = env.client.encrypt_query(attack, column="text", table=env.table, query_type="match")
    op = env.client.encrypt(attack, column="text", table=env.table)
    payload = _sealed(op.with_lock_context(env.alice))
    terms = query.with_lock_context(env.alice).unwrap()
    monkeypatch.undo()
    assert seen and max(seen) <= 30
    assert matches(terms, payload)
    assert env.client.decrypt(payload).with_lock_context(env.alice).unwrap() == attack


@PROPS
@given(st.text())
def test_stream_safe_changes_only_long_runs(text: str) -> None:
    from lockkit._text import stream_safe

    safe = stream_safe(text)
    if _longest_non_starter_run(text) <= 30:
        assert safe == text  # real text: terms unchanged
    else:
        assert safe.replace("\u034f", "") == text.replace("\u034f", "") and _longest_non_starter_run(safe) <= 30
