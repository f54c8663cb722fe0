"""Text made safe to normalise (internal).

Unicode normalisation puts runs of combining marks into canonical order, and CPython does that
with an insertion sort: a run of k marks of alternating classes costs O(k^2) (64,000 such
characters took 2 s to index, a megabyte minutes). UAX #15's Stream-Safe Text Format bounds
the runs: after 30 consecutive non-starters (in the compatibility decomposition) a COMBINING
GRAPHEME JOINER (U+034F, itself a starter) is inserted, so no run is longer than 30. Real text
never has such runs, so its normal forms, and the search terms computed over them, are
unchanged.
"""

from __future__ import annotations

import re
import unicodedata

_CGJ = "\u034f"
_MAX_RUN = 30
#: a run of more than 30 characters at or above U+0300 (below it none is or starts with a
#: non-starter): text without one cannot hold a long run of non-starters
_LONG_RUN = re.compile("[\u0300-\U0010ffff]{31,}")
#: per character: (leading non-starters, trailing non-starters, all of it non-starters) of its
#: NFKD; memoised (text repeats characters), bounded
_INFO: dict[str, tuple[int, int, bool]] = {}


def _info(c: str) -> tuple[int, int, bool]:
    got = _INFO.get(c)
    if got is None:
        combining = unicodedata.combining
        d = unicodedata.normalize("NFKD", c)
        lead = 0
        while lead < len(d) and combining(d[lead]):
            lead += 1
        trail = 0
        while trail < len(d) - lead and combining(d[-1 - trail]):
            trail += 1
        if len(_INFO) >= 8192:
            _INFO.clear()
        got = _INFO[c] = (lead, trail, lead == len(d))
    return got


def stream_safe(text: str) -> str:
    """``text`` in UAX #15's Stream-Safe Text Format: a U+034F before any character that would
    make a run of non-starters longer than 30 (the text itself when it has none, the usual case,
    or when it is already in NFKD: its runs are in canonical order, which normalising sorts in
    linear time). Like the format itself, not canonical-equivalence preserving for text with
    such runs: crafted text only."""
    if text.isascii() or not _LONG_RUN.search(text) or unicodedata.is_normalized("NFKD", text):
        return text  # fast answers in C: nothing to reorder (in NFKD every run is in order already)
    cuts: list[int] = []
    run = 0
    info = _info
    for i, c in enumerate(text):
        if c < "\u0300":  # no character below U+0300 is or starts with a non-starter
            run = 0
            continue
        lead, trail, whole = info(c)
        if run + lead > _MAX_RUN:
            cuts.append(i)
            run = 0
        run = run + lead if whole else trail
    if not cuts:
        return text
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    return _CGJ.join(pieces)
