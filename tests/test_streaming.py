"""Streaming bulk operations: any length of input, one key-service call per chunk, results in
order, memory that does not grow with the input."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator

import pytest

from lockkit import Encryption, LockContext
from lockkit.schema import EncryptedTable


def values(n: int) -> Iterator[str]:
    return (f"user{i}@example.com" for i in range(n))


def test_stream_round_trip_in_order_with_one_call_per_chunk(
    client: Encryption, users: EncryptedTable, alice: LockContext, key_service: object
) -> None:
    before = key_service.release_calls  # type: ignore[attr-defined]
    enc = [r.unwrap() for r in client.stream_encrypt(values(2500), column="email", table=users, lock_context=alice, chunk_size=1000)]
    assert key_service.release_calls - before == 3  # type: ignore[attr-defined]
    out = [r.unwrap() for r in client.stream_decrypt(iter(enc), lock_context=alice, chunk_size=1000)]
    assert out == list(values(2500))


def test_stream_isolation(client: Encryption, users: EncryptedTable, alice: LockContext, bob: LockContext) -> None:
    enc = [r.unwrap() for r in client.stream_encrypt(values(10), column="email", table=users, lock_context=alice)]
    denied = list(client.stream_decrypt(enc, lock_context=bob))
    assert len(denied) == 10 and all(r.failure is not None and r.failure.type == "DecryptionError" for r in denied)


def test_a_bad_lock_context_fails_the_rest_and_stops(client: Encryption, users: EncryptedTable) -> None:
    expired = LockContext(cts_token={"accessToken": "x.y.z", "expiry": int(time.time()) - 10})
    out = list(client.stream_encrypt(values(2500), column="email", table=users, lock_context=expired, chunk_size=1000))
    assert len(out) == 1000 and all(r.failure is not None and r.failure.type == "LockContextError" for r in out)


def test_chunk_size_must_be_positive(client: Encryption, users: EncryptedTable) -> None:
    with pytest.raises(ValueError):
        list(client.stream_encrypt(values(1), column="email", table=users, chunk_size=0))


@pytest.mark.backends("local")
def test_peak_memory_is_flat(client: Encryption, users: EncryptedTable, alice: LockContext) -> None:
    def peak(n: int) -> int:
        tracemalloc.start()
        for r in client.stream_encrypt(values(n), column="email", table=users, lock_context=alice, chunk_size=500):
            r.unwrap()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(2_000), peak(40_000)
    assert large < small * 2, (small, large)  # 20x the input, not 20x the memory


class _Watching:
    """A key service that records whether the garbage collector runs while it releases keys
    (and can hold a release until told to go on)."""

    def __init__(self, inner: object) -> None:
        import threading

        self.inner, self.seen, self.entered, self.go = inner, [], threading.Event(), threading.Event()
        self.go.set()
        self.hold_next = False

    def release(self, **kwargs: object) -> object:
        import gc

        self.seen.append(gc.isenabled())
        if self.hold_next:  # this call waits for go; later ones run through
            self.hold_next = False
            self.entered.set()
            self.go.wait(20)
        return self.inner.release(**kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture
def watched(users: EncryptedTable, key_service: object, token_service: object) -> tuple[Encryption, _Watching]:
    ks = _Watching(key_service)
    return Encryption([users], key_service=ks, token_service=token_service), ks  # type: ignore[arg-type]


def test_large_bulk_operations_pause_the_garbage_collector_and_restore_it(
    watched: tuple[Encryption, _Watching], users: EncryptedTable, alice: LockContext
) -> None:
    """Full collections re-walk every result a large list-based operation holds (at 1M values
    the time per value doubled): the collector is paused for large batches only, and restored
    afterwards, also when the operation fails; streams never pause it."""
    import gc

    from lockkit.client import GC_PAUSE_MIN_ITEMS

    client, ks = watched
    n = GC_PAUSE_MIN_ITEMS
    assert gc.isenabled()
    payloads = [r.unwrap() for r in client.bulk_encrypt([f"u{i}@x.org" for i in range(n)], column="email",
                                                        table=users).with_lock_context(alice).unwrap()]
    assert ks.seen == [False] and gc.isenabled()
    client.bulk_decrypt(payloads).with_lock_context(alice).unwrap()
    client.bulk_decrypt(payloads[:10]).with_lock_context(alice).unwrap()  # small: never paused
    list(client.stream_decrypt(payloads, chunk_size=n, lock_context=alice))
    assert ks.seen == [False, False, True, True] and gc.isenabled()
    terms = [{"value": f"u{i}@x.org", "column": "email", "table": users} for i in range(n)]
    client.bulk_encrypt_query(terms).with_lock_context(alice).unwrap()
    assert ks.seen[-1] is False and gc.isenabled()
    failed = client.bulk_decrypt([{**payloads[0], "c": "!"}] * n).with_lock_context(alice).result()
    assert failed.data is not None and gc.isenabled()
    bad = client.bulk_encrypt(["x"] * n, column="email", table=users).with_lock_context(
        LockContext(cts_token={"accessToken": "forged", "expiry": 4_000_000_000})).result()
    assert bad.failure is not None and gc.isenabled()  # restored after an error too
    gc.disable()
    try:  # an app that turned the collector off keeps it off
        client.bulk_decrypt(payloads).with_lock_context(alice).unwrap()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_concurrent_large_operations_share_the_pause(
    watched: tuple[Encryption, _Watching], users: EncryptedTable, alice: LockContext
) -> None:
    """The collector resumes only when the last of two concurrent large operations ends."""
    import gc
    import threading

    from lockkit.client import GC_PAUSE_MIN_ITEMS

    client, ks = watched
    values = [f"u{i}@x.org" for i in range(GC_PAUSE_MIN_ITEMS)]
    ks.hold_next = True
    ks.go.clear()
    held = threading.Thread(target=lambda: client.bulk_encrypt(values, column="email", table=users)
                            .with_lock_context(alice).unwrap())
    held.start()
    try:
        assert ks.entered.wait(20)
        client.bulk_encrypt(values, column="email", table=users).with_lock_context(alice).unwrap()
        assert not gc.isenabled()  # the first operation still runs: still paused
    finally:
        ks.go.set()
        held.join(20)
    assert not held.is_alive() and ks.seen == [False, False] and gc.isenabled()
