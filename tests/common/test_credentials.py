"""ev_common/credentials.py: credentials, their scrypt hashes, and the limiter of failed attempts."""

from __future__ import annotations

import base64
import re
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ev_common.credentials import (
    CREDENTIAL_LENGTH,
    FailureLimiter,
    hash_credential,
    is_credential_text,
    new_credential,
    verify_credential,
)
from ev_common.protocol.fields import Token
from tests.support.clock import FakeClock

HASH_FORMAT = re.compile(r"scrypt\$14\$8\$1\$([A-Za-z0-9+/]{22})\$([A-Za-z0-9+/]{43})")


# -- credentials ------------------------------------------------------------------------------


def test_a_credential_is_evc1_and_256_random_bits_in_base64url():
    seen = set()
    for _ in range(50):
        credential = new_credential()
        assert re.fullmatch(r"evc1_[A-Za-z0-9_-]{43}", credential)
        assert len(credential) == CREDENTIAL_LENGTH == 48
        raw = base64.urlsafe_b64decode(credential[5:] + "=")
        assert len(raw) == 32
        assert is_credential_text(credential)
        assert Token().check(credential) == credential  # fits REG's credential field
        seen.add(credential)
    assert len(seen) == 50


def test_the_hash_has_the_documented_format_and_a_fresh_salt():
    credential = new_credential()
    first, second = hash_credential(credential), hash_credential(credential)
    for stored in (first, second):
        match = HASH_FORMAT.fullmatch(stored)
        assert match, stored
        assert len(base64.b64decode(match.group(1) + "==")) == 16
        assert len(base64.b64decode(match.group(2) + "=")) == 32
        assert credential not in stored
        assert len(stored) <= 255  # cp_registrations.credential_hash
    assert first != second  # a new salt each time


def test_verify_accepts_the_right_credential_only():
    credential = new_credential()
    stored = hash_credential(credential)
    assert verify_credential(credential, stored) is True
    assert verify_credential(new_credential(), stored) is False
    assert verify_credential(credential[:-1], stored) is False
    assert verify_credential(credential + "A", stored) is False
    assert verify_credential(credential.upper(), stored) is False


@pytest.mark.parametrize("credential", [None, "", 42, b"evc1_x", "x" * 257, "\ud800", "evc1_\x00", ["evc1_"]],
                         ids=["none", "empty", "int", "bytes", "too-long", "surrogate", "nul", "list"])
def test_verify_refuses_malformed_credentials_without_raising(credential):
    stored = hash_credential(new_credential())
    assert verify_credential(credential, stored) is False


@pytest.mark.parametrize("stored", [
    None, "", "scrypt", "scrypt$14$8$1$salt", "bcrypt$14$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
    "scrypt$99$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",  # n = 2**99: refused, not computed
    "scrypt$20$32$16$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",  # gigabytes of memory: refused
    "scrypt$14$8$1$!!!$AAAA", "scrypt$14$8$1$AAAAAAAAAAAAAAAAAAAAAA$A", "scrypt$-1$8$1$AA$AA",
    "scrypt$14$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 300, 12345, b"scrypt$14",
], ids=lambda v: repr(v)[:30])
def test_verify_refuses_malformed_hashes_without_raising(stored):
    assert verify_credential(new_credential(), stored) is False


def test_verify_against_no_hash_is_false():
    assert verify_credential(new_credential(), None) is False


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300))
def test_verify_never_raises_on_any_text(credential, stored):
    assert verify_credential(credential, stored) is False


@settings(max_examples=25, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=256))
def test_any_text_hashed_verifies(text):
    assert verify_credential(text, hash_credential(text)) is True


def test_hash_refuses_what_is_not_a_credential():
    for bad in (None, "", "x" * 257, 5):
        with pytest.raises(ValueError):
            hash_credential(bad)


# -- FailureLimiter ----------------------------------------------------------------------------


def test_a_key_is_locked_after_n_failures_within_the_window():
    clock = FakeClock()
    limiter = FailureLimiter(max_failures=3, window=60, lockout=10, max_lockout=100, clock=clock)
    assert limiter.locked("CP1") == 0.0
    assert limiter.failure("CP1") == 0.0
    assert limiter.failure("CP1") == 0.0
    assert limiter.locked("CP1") == 0.0
    assert limiter.failure("CP1") == 10.0
    assert limiter.locked("CP1") == 10.0
    clock.advance(4)
    assert limiter.locked("CP1") == pytest.approx(6.0)
    assert limiter.locked("CP2") == 0.0  # other keys are not affected
    clock.advance(6)
    assert limiter.locked("CP1") == 0.0


def test_failures_outside_the_window_do_not_add_up():
    clock = FakeClock()
    limiter = FailureLimiter(max_failures=3, window=60, lockout=10, max_lockout=100, clock=clock)
    limiter.failure("ip")
    clock.advance(30)
    limiter.failure("ip")
    clock.advance(31)  # the first failure left the window
    assert limiter.failure("ip") == 0.0
    assert limiter.locked("ip") == 0.0
    assert limiter.failure("ip") == 10.0


def test_lockouts_double_up_to_the_cap():
    clock = FakeClock()
    limiter = FailureLimiter(max_failures=2, window=60, lockout=10, max_lockout=35, forget_after=1000, clock=clock)
    lengths = []
    for _ in range(5):
        limiter.failure("k")
        lengths.append(limiter.failure("k"))
        clock.advance(lengths[-1])
        assert limiter.locked("k") == 0.0
    assert lengths == [10, 20, 35, 35, 35]


def test_failures_while_locked_count_nothing_more():
    clock = FakeClock()
    limiter = FailureLimiter(max_failures=2, window=60, lockout=10, max_lockout=100, clock=clock)
    limiter.failure("k")
    limiter.failure("k")
    for _ in range(10):
        assert limiter.failure("k") == 0.0
    assert limiter.locked("k") == 10.0
    clock.advance(10)
    assert limiter.failure("k") == 0.0  # a fresh count after the lockout
    assert limiter.failure("k") == 20.0  # the second lockout is longer


def test_success_forgets_the_key():
    clock = FakeClock()
    limiter = FailureLimiter(max_failures=2, window=60, lockout=10, max_lockout=100, clock=clock)
    limiter.failure("k")
    limiter.success("k")
    assert limiter.failure("k") == 0.0
    assert len(limiter) == 1
    limiter.success("k")
    assert len(limiter) == 0


def test_a_quiet_key_is_forgotten_and_starts_again_from_the_first_lockout():
    clock = FakeClock()
    limiter = FailureLimiter(max_failures=1, window=10, lockout=5, max_lockout=50, forget_after=100, clock=clock)
    assert limiter.failure("k") == 5
    clock.advance(5)
    assert limiter.failure("k") == 10
    clock.advance(10 + 101)
    assert limiter.locked("k") == 0.0
    assert len(limiter) == 0
    assert limiter.failure("k") == 5


def test_memory_is_bounded_and_unlocked_keys_go_first():
    clock = FakeClock()
    limiter = FailureLimiter(max_failures=1, window=60, lockout=100, max_lockout=100, max_keys=3, clock=clock)
    limiter.failure("locked")  # locked out at once (max_failures=1)
    limiter2 = FailureLimiter(max_failures=5, window=60, lockout=100, max_lockout=100, max_keys=3, clock=clock)
    for i in range(1000):
        limiter2.failure(f"addr{i}")
    assert len(limiter2) == 3
    assert limiter2.evicted == 997
    # a flood of other keys does not free a locked key while unlocked ones can go instead
    mixed = FailureLimiter(max_failures=2, window=60, lockout=100, max_lockout=100, max_keys=3, clock=clock)
    mixed.failure("target")
    mixed.failure("target")
    for i in range(100):
        mixed.failure(f"flood{i}")
    assert mixed.locked("target") == 100.0
    assert len(mixed) == 3
    assert limiter.locked("locked") == 100.0


def test_when_every_key_is_locked_the_oldest_goes():
    clock = FakeClock()
    limiter = FailureLimiter(max_failures=1, window=60, lockout=100, max_lockout=100, max_keys=2, clock=clock)
    for key in ("a", "b", "c"):
        limiter.failure(key)
        clock.advance(1)
    assert len(limiter) == 2
    assert limiter.locked("a") == 0.0
    assert limiter.locked("b") > 0 and limiter.locked("c") > 0


def test_bad_settings_are_refused():
    for kwargs in ({"max_failures": 0}, {"window": 0}, {"lockout": 0}, {"lockout": 10, "max_lockout": 5},
                   {"max_keys": 0}):
        with pytest.raises(ValueError):
            FailureLimiter(**kwargs)


def test_the_limiter_is_thread_safe():
    limiter = FailureLimiter(max_failures=1000, window=600, lockout=10, max_lockout=10, max_keys=50)
    started = []

    def hammer(n):
        for i in range(2000):
            limiter.failure(f"{n}-{i % 80}")
            limiter.locked(f"{n}-{i % 7}")
        started.append(n)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(started) == 4
    assert len(limiter) <= 50
