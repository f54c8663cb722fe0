"""Search terms: equality (HMAC) and free-text match (bloom filter of n-grams).

Both are computed with HMAC-SHA256 (``cryptography``) under index keys the key service
releases per (table, column) and, with a lock context, per identity: one user's terms never
equal another user's terms for the same value.

Leakage, stated plainly: an equality term reveals which of a user's values in a column are
equal; a match term reveals how much two values' trigram sets overlap. Neither reveals a value
to someone without the index key. See ``docs/threat-model.md``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac

from ._text import stream_safe
from .schema import MatchIndex

_WORD_RE = re.compile(r"\w+", re.UNICODE)


class TermHasher:
    """Computes terms for one (table, column, identity) index key (64 bytes)."""

    __slots__ = ("_hm", "_bf", "_grams", "_words")

    def __init__(self, index_material: bytes) -> None:
        self._hm = hmac.HMAC(index_material[:32], hashes.SHA256())
        self._bf = hmac.HMAC(index_material[32:64], hashes.SHA256())
        self._grams: dict[tuple[str, int, int], tuple[int, ...]] = {}
        self._words: dict[tuple[str, int, int, int], frozenset[int]] = {}

    def equality(self, data: bytes) -> str:
        h = self._hm.copy()
        h.update(data)
        return h.finalize().hex()

    def _positions(self, gram: str, opts: MatchIndex) -> tuple[int, ...]:
        key = (gram, opts.filter_size, opts.hash_count)
        got = self._grams.get(key)
        if got is None:
            h = self._bf.copy()
            h.update(gram.encode("utf-8"))
            d = h.finalize()
            if opts.hash_count > 16:  # pragma: no cover - MatchIndex forbids it
                raise ValueError("hash_count")
            got = tuple(
                int.from_bytes(d[2 * i : 2 * i + 2], "big") % opts.filter_size for i in range(opts.hash_count)
            )
            if len(self._grams) >= 65536:  # bounded, like the word memo (a huge batch of varied text)
                self._grams.clear()
            self._grams[key] = got
        return got

    def _word_bits(self, word: str, opts: MatchIndex) -> frozenset[int]:
        """The filter bits of one normalised word's n-grams (memoised: words repeat)."""
        key = (word, opts.ngram, opts.filter_size, opts.hash_count)
        got = self._words.get(key)
        if got is None:
            n = opts.ngram
            grams = [word] if len(word) <= n else [word[i : i + n] for i in range(len(word) - n + 1)]
            found: set[int] = set()
            for g in grams:
                found.update(self._positions(g, opts))
            if len(self._words) >= 65536:
                self._words.clear()
            got = self._words[key] = frozenset(found)
        return got

    def match(self, text: str, opts: MatchIndex) -> list[int]:
        """The sorted bits of ``text``'s n-grams (the same set :func:`ngrams` yields)."""
        bits: set[int] = set()
        for word in words(text):
            bits |= self._word_bits(word, opts)
        return sorted(bits)


def normalise(text: str) -> str:
    """Text as free-text match indexes see it: NFKC-normalised and case-folded, then NFKC again
    (case folding can decompose: "İ" becomes "i" + a combining dot), so "Café" typed decomposed,
    "ＣＡＦÉ" and "café" are one word. Re-check decrypted candidates on this form. Runs of more
    than 30 combining marks (never in real text) are first broken up (UAX #15's Stream-Safe
    Text Format): normalising them costs quadratic time."""
    if text.isascii():  # NFKC-invariant, and its casefold is lower()
        return text.lower()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", stream_safe(text)).casefold())


def words(text: str) -> list[str]:
    """The words a match index cuts into n-grams: runs of word characters of :func:`normalise`'s
    form, combining marks included (a Devanagari vowel sign or a Thai vowel mark is part of its
    word, not a break in it); punctuation separates words: "finance!" is "finance"."""
    norm = normalise(text)
    if norm.isascii():
        return _WORD_RE.findall(norm)
    out: list[str] = []
    start = -1
    for i, c in enumerate(norm):
        if c.isalnum() or c == "_" or unicodedata.category(c)[0] == "M":
            if start < 0:
                start = i
        elif start >= 0:
            out.append(norm[start:i])
            start = -1
    if start >= 0:
        out.append(norm[start:])
    return out


def ngrams(text: str, n: int) -> Iterable[str]:
    """Lower-cased, NFKC-normalised words, cut into ``n``-grams (shorter words whole)."""
    seen: set[str] = set()
    for word in words(text):
        grams = [word] if len(word) <= n else [word[i : i + n] for i in range(len(word) - n + 1)]
        for g in grams:
            if g not in seen:
                seen.add(g)
                yield g


def matches(term: Mapping[str, Any], payload: Mapping[str, Any]) -> bool:
    """Does ``payload`` satisfy the query ``term`` from ``encrypt_query``?

    Equality: ``hm`` equal (constant-time). Match: every bit of the term's ``bf`` is set in the
    payload's ``bf`` (may give false positives at the bloom filter's rate, never false
    negatives). A term with both checks both.
    """
    import hmac as _hmac

    if not isinstance(payload, Mapping) or not isinstance(term, Mapping):
        return False
    checked = False
    if "hm" in term:
        checked = True
        hm = payload.get("hm")
        if not isinstance(hm, str) or not _hmac.compare_digest(hm.encode(), str(term["hm"]).encode()):
            return False
    if "bf" in term:
        checked = True
        bf, want = payload.get("bf"), term["bf"]
        if not isinstance(bf, list) or not isinstance(want, list):
            return False
        try:  # the stored filter is not authenticated: anything may be in it
            if not set(want) <= set(bf):
                return False
        except TypeError:  # unhashable junk
            return False
    return checked
