from __future__ import annotations

import pytest

from lockkit import errors
from lockkit.errors import ERROR_CLASSES, Failure, LockkitError, Result


@pytest.mark.parametrize(
    ("failure_type", "cls"),
    [
        ("ClientInitError", errors.ClientInitError),
        ("CtsTokenError", errors.CtsTokenError),
        ("LockContextError", errors.LockContextError),
        ("EncryptionError", errors.EncryptionError),
        ("DecryptionError", errors.DecryptionError),
        ("IdentityError", errors.IdentityError),
    ],
)
def test_failure_type_maps_to_class(failure_type: str, cls: type[LockkitError]) -> None:
    assert ERROR_CLASSES[failure_type] is cls
    assert cls("boom").to_failure() == Failure(failure_type, "boom")  # type: ignore[arg-type]
    with pytest.raises(cls, match="boom"):
        Result(failure=Failure(failure_type, "boom")).unwrap()  # type: ignore[arg-type]


def test_subclasses_report_their_parent_type() -> None:
    assert errors.ConfigurationError("x").failure_type == "ClientInitError"
    assert errors.ExpiredCredentialError("x").reason == "expired"
    assert errors.MissingCredentialError("x").reason == "missing"
    assert errors.ProviderUnavailableError("x").reason == "unavailable"


def test_result_none_is_data() -> None:
    r: Result[None] = Result(None)
    assert r.ok and r.failure is None and r.unwrap() is None


def test_result_is_immutable_and_repr_hides_data() -> None:
    r = Result("secret plaintext")
    with pytest.raises(AttributeError):
        r.data = "x"  # type: ignore[misc]
    assert "secret" not in repr(r)
    f = Failure("DecryptionError", "m")
    with pytest.raises(AttributeError):
        f.message = "x"  # type: ignore[misc]


def test_ok_results_turns_values_into_results_and_errors_into_failures() -> None:
    from lockkit.errors import DecryptionError, ok_results

    payload = {"v": 1}
    out = ok_results(["a", None, payload, DecryptionError("tampered"), 0])
    assert [r.data for r in out] == ["a", None, payload, None, 0]
    assert out[2].data is payload  # no copies
    assert [r.failure for r in out] == [None, None, None, Failure("DecryptionError", "tampered"), None]
    assert out[0] == Result("a") and out[3] == Result.from_error(DecryptionError("tampered"))
    with pytest.raises(AttributeError):
        out[0].data = "b"  # type: ignore[misc]  # still immutable


def test_outages_are_retryable_and_faults_of_the_input_are_not() -> None:
    """``retryable`` tells a passing outage (answer 503, try later) from a value that is truly
    unreadable; it survives the trip through a Failure and back."""
    from lockkit.cts.embedded import CtsUnavailableError
    from lockkit.errors import DecryptionError, ProviderUnavailableError

    assert not DecryptionError("tampered").retryable and not Failure("DecryptionError", "x").retryable
    assert CtsUnavailableError("down").retryable and ProviderUnavailableError("down").retryable
    down = DecryptionError("the key service is unavailable", retryable=True)
    failure = Result.from_error(down).failure
    assert failure == Failure("DecryptionError", "the key service is unavailable", retryable=True)
    assert failure != Failure("DecryptionError", "the key service is unavailable")
    assert "retryable=True" in repr(failure) and "retryable" not in repr(Failure("DecryptionError", "x"))
    with pytest.raises(DecryptionError) as info:
        Result.from_error(down).unwrap()
    assert info.value.retryable and type(info.value) is DecryptionError
