"""Keyed-hash pseudonymization (ingest/pseudonymize.py): tokens, free-text scrubbing, events."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eightbox.ingest.pseudonymize import TOKEN_PREFIX, Pseudonymizer
from eightbox.ingest.schema import (
    Client,
    ImpressionServed,
    ItemClicked,
    ItemEngaged,
    ItemPublished,
    UserSignedUp,
    to_wire,
)

NOW = datetime(2026, 11, 26, 10, tzinfo=timezone.utc)
EMAIL = "alice.smith+news@mail.example.org"
IPV4 = "203.0.113.77"
IPV6_FULL = "2001:0db8:85a3:0000:0000:8a2e:0370:7334"
IPV6_SHORT = "2001:db8::8a2e:370:7334"
DEVICE = "device-5f1e-raw"


@pytest.fixture
def p() -> Pseudonymizer:
    return Pseudonymizer("test-key")


def test_a_token_is_stable_for_the_same_key_and_value(p):
    assert p.token(EMAIL) == p.token(EMAIL) == Pseudonymizer("test-key").token(EMAIL)
    assert Pseudonymizer(b"test-key").token(EMAIL) == p.token(EMAIL)  # str and bytes keys agree


def test_a_token_differs_across_keys_and_across_values(p):
    assert p.token(EMAIL) != Pseudonymizer("another-key").token(EMAIL)
    assert p.token(IPV4) != p.token("203.0.113.78")


def test_a_token_has_the_prefix_and_does_not_contain_the_value(p):
    token = p.token(IPV4)
    assert token.startswith(TOKEN_PREFIX) and TOKEN_PREFIX == "pii_"
    assert IPV4 not in token and len(token) > len(TOKEN_PREFIX) + 16


def test_a_token_is_not_hashed_again(p):
    token = p.token(EMAIL)
    assert p.token(token) == token
    assert p.scrub(token.encode()) == token.encode()


@pytest.mark.parametrize("value", [EMAIL, IPV4, IPV6_FULL, IPV6_SHORT, "fe80::1", "::1", "1::"])
def test_scrub_replaces_an_email_or_ip_address_inside_arbitrary_bytes(p, value):
    data = b"\x00\xffbefore " + value.encode() + b" after\n"
    out = p.scrub(data)
    assert value.encode() not in out
    assert out == b"\x00\xffbefore " + p.token(value).encode() + b" after\n"


def test_scrub_replaces_every_address_in_a_log_line(p):
    line = f"login {EMAIL} from {IPV4} via [{IPV6_SHORT}]:443 ({IPV6_FULL}), ok".encode()
    out = p.scrub(line)
    for value in (EMAIL, IPV4, IPV6_SHORT, IPV6_FULL):
        assert value.encode() not in out and p.token(value).encode() in out
    assert out.startswith(b"login pii_") and out.endswith(b", ok")


@pytest.mark.parametrize("text", [
    "2026-11-26T10:00:00Z", "2026-11-26T10:00:00.123+01:00", "at 10:00:00 or 23:59",
    "version 1.2.3", "v10.20.30-rc1", "42", "3.14159", "1,234,567.89", "ratio 4:3", "no personal data",
])
def test_scrub_leaves_timestamps_versions_and_numbers_untouched(p, text):
    assert p.scrub(text.encode()) == text.encode()
    assert p.scrub_text(text) == text


def test_scrub_text_keeps_non_ascii_text_around_replacements(p):
    assert p.scrub_text(f"café für {EMAIL} ✓") == f"café für {p.token(EMAIL)} ✓"


def test_scrub_replaces_an_ipv4_address_at_the_end_of_a_sentence(p):
    assert IPV4.encode() not in p.scrub(f"Contact came from {IPV4}. Blocked.".encode())


_LOCAL = st.from_regex(r"[a-z0-9][a-z0-9._%+-]{0,15}", fullmatch=True)
_DOMAIN = st.lists(st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), min_size=1, max_size=3).map(".".join)
_TLD = st.from_regex(r"[a-z]{2,6}", fullmatch=True)
_EMAILS = st.builds(lambda local, domain, tld: f"{local}@{domain}.{tld}", _LOCAL, _DOMAIN, _TLD)
_FILLER = st.text(alphabet="abcXYZ 019,;:()<>[]\"'\n\t-", max_size=30)


@settings(max_examples=150, deadline=None)
@given(emails=st.lists(_EMAILS, min_size=1, max_size=4), fillers=st.lists(_FILLER, min_size=5, max_size=5))
def test_scrub_output_never_contains_a_generated_email_address(emails, fillers):
    p = Pseudonymizer("property-key")
    text = fillers[0] + " " + " ".join(e + " " + f for e, f in zip(emails, fillers[1:]))
    out = p.scrub(text.encode())
    for email in emails:
        assert email.encode() not in out
    assert b"@" not in out


def _client() -> Client:
    return Client(ip=IPV4, device_id=DEVICE, user_agent="Mozilla/5.0")


def test_apply_replaces_client_ip_and_device_id_by_tokens(p):
    event = ItemClicked(event_time=NOW, user_id="u1", item_id="i1", client=_client())
    out = p.apply(event)
    assert out.client == Client(ip=p.token(IPV4), device_id=p.token(DEVICE), user_agent="Mozilla/5.0")
    assert (out.user_id, out.item_id, out.event_id, out.event_time) == ("u1", "i1", event.event_id, NOW)
    assert event.client.ip == IPV4  # the input event is not mutated


def test_apply_replaces_an_ipv6_client_address_and_keeps_an_absent_device_id_absent(p):
    event = ItemEngaged(event_time=NOW, user_id="u", item_id="i", kind="like", client=Client(ip=IPV6_SHORT))
    out = p.apply(event)
    assert out.client.ip == p.token(IPV6_SHORT) and out.client.device_id is None


def test_apply_replaces_the_signup_email_by_a_token(p):
    event = UserSignedUp(event_time=NOW, user_id="u1", email=EMAIL, country="DE", client=_client())
    out = p.apply(event)
    assert out.email == p.token(EMAIL) and out.country == "DE" and out.user_id == "u1"


def test_apply_scrubs_addresses_in_a_published_items_title_and_description(p):
    event = ItemPublished(event_time=NOW, item_id="i1", creator_id="c1", category="talk",
                          title=f"Ask {EMAIL} anything", description=f"Server {IPV4}, mirror {IPV6_FULL} (v1.2.3)")
    out = p.apply(event)
    assert out.title == f"Ask {p.token(EMAIL)} anything"
    assert out.description == f"Server {p.token(IPV4)}, mirror {p.token(IPV6_FULL)} (v1.2.3)"
    assert (out.item_id, out.creator_id, out.category) == ("i1", "c1", "talk")


@pytest.mark.parametrize("event", [
    ItemClicked(event_time=NOW, user_id="u", item_id="i", surface="home"),
    ItemClicked(event_time=NOW, user_id="u", item_id="i", client=Client(user_agent="curl/8")),
    ImpressionServed(event_time=NOW, request_id="r", user_id="u", item_id="i", position=1, surface="s"),
    UserSignedUp(event_time=NOW, user_id="u", country="DE"),
    ItemPublished(event_time=NOW, item_id="i", creator_id="c", category="x", title="Heat (1995) v1.2"),
], ids=["click", "user-agent-only", "impression", "signup-without-email", "plain-item"])
def test_apply_leaves_events_without_personal_data_unchanged(p, event):
    out = p.apply(event)
    assert out == event and to_wire(out) == to_wire(event)


def test_apply_is_idempotent(p):
    event = UserSignedUp(event_time=NOW, user_id="u", email=EMAIL, client=_client())
    once = p.apply(event)
    assert p.apply(once) == once


@pytest.mark.parametrize("event", [
    ItemClicked(event_time=NOW, user_id="u", item_id="i", client=_client()),
    ImpressionServed(event_time=NOW, request_id="r", user_id="u", item_id="i", position=0, surface="s",
                     client=Client(ip=IPV6_FULL, device_id=DEVICE)),
    UserSignedUp(event_time=NOW, user_id="u", email=EMAIL, client=_client(), country=f"see {IPV4}"),
    ItemPublished(event_time=NOW, item_id="i", creator_id="c", category="x", client=_client(),
                  title=f"by {EMAIL}", description=f"{IPV6_SHORT} and {IPV4} and {EMAIL}"),
], ids=["click", "impression-ipv6", "signup", "item"])
def test_no_raw_personal_value_reaches_the_wire(p, event):
    wire = to_wire(p.apply(event))
    for raw in (EMAIL, IPV4, IPV6_FULL, IPV6_SHORT, DEVICE):
        assert raw.encode() not in wire


def test_scrub_leaves_cpp_scope_operators_and_ends_addresses_before_a_colon(p):
    assert p.scrub(b"std::vector") == b"std::vector"
    assert b"2001:db8::1" not in p.scrub(b"2001:db8::1: blocked")
