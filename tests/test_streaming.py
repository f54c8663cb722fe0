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
