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
from itertools import chain
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac

from ._text import stream_safe
from .schema import MatchIndex

_WORD_RE = re.compile(r"\w+", re.UNICODE)


class TermHasher:
    """Computes terms for one (table, column, identity) index key (64 bytes)."""

    __slots__ = ("_hm", "_bf", "_memos")

    def __init__(self, index_material: bytes) -> None:
        self._hm = hmac.HMAC(index_material[:32], hashes.SHA256())
        self._bf = hmac.HMAC(index_material[32:64], hashes.SHA256())
        #: per match index's (filter size, hash count): n-gram -> its filter bits
        self._memos: dict[tuple[int, int], dict[str, tuple[int, ...]]] = {}

    def equality(self, data: bytes) -> str:
        h = self._hm.copy()
        h.update(data)
        return h.finalize().hex()

    def _positions(self, gram: str, opts: MatchIndex) -> tuple[int, ...]:
        """The filter bits of one n-gram: ``hash_count`` 16-bit words of its HMAC, modulo the
        filter's size."""
        h = self._bf.copy()
        h.update(gram.encode("utf-8"))
        d = h.finalize()
        if opts.hash_count > 16:  # pragma: no cover - MatchIndex forbids it
            raise ValueError("hash_count")
        return tuple(int.from_bytes(d[2 * i : 2 * i + 2], "big") % opts.filter_size for i in range(opts.hash_count))

    def match(self, text: str, opts: MatchIndex) -> list[int]:
        """The sorted bits of ``text``'s n-grams (the same set :func:`ngrams` yields). Each
        n-gram's bits are memoised (n-grams repeat far more than words do); the memo is
        bounded (emptied at 65,536 entries), so a huge batch of varied text cannot grow it
        without limit."""
        memo = self._memos.get((opts.filter_size, opts.hash_count))
        if memo is None:
            memo = self._memos[(opts.filter_size, opts.hash_count)] = {}
        n = opts.ngram
        grams: list[str] = []
        for word in words(text):
            if len(word) <= n:
                grams.append(word)
            else:
                grams += [word[i : i + n] for i in range(len(word) - n + 1)]
        for g in grams:
            if g not in memo:
                if len(memo) >= 65536:
                    memo.clear()
                memo[g] = self._positions(g, opts)
        try:
            return sorted(set(chain.from_iterable(map(memo.__getitem__, grams))))
        except KeyError:  # emptied above while this text's n-grams were being added
            return sorted(set(chain.from_iterable(self._positions(g, opts) for g in grams)))


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
