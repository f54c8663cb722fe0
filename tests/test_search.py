"""Search terms, computed by TermHasher, against an independent statement of the format:
equality = HMAC-SHA256 under the first half of the index key; match = the sorted set of
``hash_count`` 16-bit big-endian words (mod the filter's size) of HMAC-SHA256 under the second
half, over every n-gram :func:`lockkit.search.ngrams` yields. Stored payloads depend on it."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes, hmac
from hypothesis import given, settings
from hypothesis import strategies as st

from lockkit.schema import MatchIndex
from lockkit.search import TermHasher, ngrams

KEY = bytes(range(64))
INDEXES = [MatchIndex(), MatchIndex(ngram=2, filter_size=256, hash_count=5), MatchIndex(ngram=4, filter_size=65536, hash_count=16)]


def _mac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def reference_bits(key: bytes, text: str, opts: MatchIndex) -> list[int]:
    bits: set[int] = set()
    for gram in ngrams(text, opts.ngram):
        d = _mac(key[32:64], gram.encode("utf-8"))
        bits.update(int.from_bytes(d[2 * i : 2 * i + 2], "big") % opts.filter_size for i in range(opts.hash_count))
    return sorted(bits)


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.text(max_size=40), min_size=1, max_size=6))
def test_match_terms_are_the_n_grams_bits_whatever_the_memo_holds(texts: list[str]) -> None:
    """One hasher, many texts and index settings in turn (its memo shared between them): each
    term is exactly the reference's bits."""
    hasher = TermHasher(KEY)
    for text in texts:
        for opts in INDEXES:
            assert hasher.match(text, opts) == reference_bits(KEY, text, opts)


def test_known_texts() -> None:
    hasher = TermHasher(KEY)
    for text in ("user816965@example.com", "Café ＣＡＦÉ café", "İstanbul", "नमस्ते दुनिया", "日本語", "a b", "", "!!!"):
        for opts in INDEXES:
            assert hasher.match(text, opts) == reference_bits(KEY, text, opts)
    assert hasher.match("", MatchIndex()) == [] and hasher.match("ab", MatchIndex()) != []


def test_the_memo_is_bounded_and_emptying_it_mid_text_changes_no_term() -> None:
    """The n-gram memo is emptied at 65,536 entries; when that happens while a text's own
    n-grams are being added, the text's term is still exact."""
    opts = MatchIndex()
    hasher = TermHasher(KEY)
    hasher.match("warm", opts)
    memo = next(iter(hasher._memos.values()))
    memo.update((f"fill{i}", (0,)) for i in range(65536 - len(memo) - 2))  # two entries to spare
    text = "pangolins quarterly budget"  # far more than two new n-grams
    assert hasher.match(text, opts) == reference_bits(KEY, text, opts)
    assert len(memo) <= 65536
    for _ in range(3):
        text = os.urandom(400).hex()
        assert hasher.match(text, opts) == reference_bits(KEY, text, opts)
        assert len(memo) <= 65536


def test_equality_terms_are_hmac_sha256_under_the_first_half_of_the_key() -> None:
    hasher = TermHasher(KEY)
    for data in (b"", b"sal@x.y", os.urandom(100)):
        assert hasher.equality(data) == _mac(KEY[:32], data).hex()
