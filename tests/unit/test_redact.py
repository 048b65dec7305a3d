"""dstream/redact.py and dstream/config/secrets.py: no form of a secret survives redaction.

The surrounding text is drawn from characters no secret uses, so any piece of a secret
(4 characters or more) found in the output is a leak, not a coincidence.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse

from hypothesis import given, settings
from hypothesis import strategies as st

from dstream.config.secrets import credential_parts, secret_values
from dstream.redact import MASK, Redactor, is_strong
from dstream.runtime.base import RUNAWAY_LINE, RedactingSink, StderrTail

_SECRET_CHARS = "abcdefghijkmnopqrstuvwABCDEFGHJKLMNPQRSTUVW0123456789!@#%^&*()/+=:\"\\'{}"
_NOISE_CHARS = " xyzXYZ.,-_|<>\t"

strong_secrets = st.text(_SECRET_CHARS, min_size=8, max_size=40).filter(is_strong)
weak_secrets = st.text("abcdefghijkmnopqrstuvw", min_size=4, max_size=7)
noise = st.text(_NOISE_CHARS, max_size=60)


def _pieces(secret: str, size: int = 4) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def _leaks(out: str, secret: str) -> bool:
    """Does ``out`` show the secret, or any 4+ character piece of it, in a form we know?"""
    encoded = urllib.parse.quote(secret, safe="")
    escaped = json.dumps(secret)[1:-1]
    return any(piece in out for form in (secret, encoded, escaped) for piece in _pieces(form, min(len(form), 8)))


def _base64_shows(out: str, secret: str) -> bool:
    """Does any base64 run in ``out`` decode (at any alignment) to text holding the secret?"""
    for run in re.findall(r"[A-Za-z0-9+/]{8,}", out):
        for start in range(4):
            chunk = run[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            if secret.encode() in base64.b64decode(chunk + "==", validate=False):
                return True
    return False


@settings(max_examples=300, deadline=None)
@given(secret=strong_secrets, before=noise, after=noise)
def test_a_strong_secret_is_masked_in_every_form(secret: str, before: str, after: str) -> None:
    redact = Redactor([secret])
    for form in (
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps({"log": f"cannot connect with {secret}"}),
    ):
        out = redact(before + form + after)
        assert not _leaks(out, secret), (form, out)
        assert MASK in out


@settings(max_examples=300, deadline=None)
@given(secret=strong_secrets, head=st.binary(max_size=5), tail=st.binary(max_size=5), urlsafe=st.booleans())
def test_a_strong_secret_is_masked_inside_base64_at_any_alignment(
    secret: str, head: bytes, tail: bytes, urlsafe: bool
) -> None:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    blob = encode(head + secret.encode() + tail).decode()
    out = Redactor([secret])(f"Authorization: Basic {blob}")
    assert not _base64_shows(out.replace("-", "+").replace("_", "/"), secret), out


@settings(max_examples=100, deadline=None)
@given(
    user=st.text("abcdefgh", min_size=1, max_size=8), password=strong_secrets, host=st.sampled_from(["db", "h:5432"])
)
def test_a_url_password_is_masked_decoded_encoded_and_as_a_basic_header(user: str, password: str, host: str) -> None:
    dsn = f"postgresql://{user}:{urllib.parse.quote(password, safe='')}@{host}/x?sslmode=require"
    redact = Redactor(secret_values({"dsn": dsn}))
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    for text in (f"connecting to {dsn}", f"auth failed for {password}", f"Authorization: Basic {basic}"):
        out = redact(text)
        assert not _leaks(out, password), out
        assert not _base64_shows(out, password), out


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.text("ABCDEFGHabcdefgh0123456789+/", min_size=16, max_size=64), min_size=2, max_size=5))
def test_each_line_of_a_multi_line_secret_is_masked_on_its_own(lines: list[str]) -> None:
    pem = "\n".join(["-----BEGIN PRIVATE KEY-----", *lines, "-----END PRIVATE KEY-----"])
    redact = Redactor([pem])
    for line in lines:  # a provider logs the key line by line: each arrives alone
        assert line not in redact(f"[stderr] {line}")
    assert redact("-----BEGIN PRIVATE KEY-----") == "-----BEGIN PRIVATE KEY-----"  # not a secret


@settings(max_examples=200, deadline=None)
@given(secret=strong_secrets, before=noise, after=noise, limit=st.integers(1, 120))
def test_text_is_redacted_before_it_is_cut_for_display(secret: str, before: str, after: str, limit: int) -> None:
    text = before + f"postgresql://app:{secret}@db/x" + after
    shown = Redactor([secret]).shorten(text, limit)
    assert len(shown) <= limit
    assert not _leaks(shown, secret), shown
    assert Redactor([secret]).shorten(text.encode(), limit) == shown


@settings(max_examples=40, deadline=None)
@given(
    secret=strong_secrets,
    offset=st.integers(-45, 5),
    chunk=st.integers(1000, 70000),
)
def test_a_runaway_stderr_line_is_never_cut_inside_a_secret(secret: str, offset: int, chunk: int) -> None:
    """A line over 64 KiB is forwarded in pieces; a secret straddling a piece boundary must
    still be masked (the unredacted cut leaked ``…://app:Super`` + ``SecretPassw0rd@…``)."""
    at = RUNAWAY_LINE + offset
    line = ("x" * at + secret + "y" * 70000 + "\n").encode()
    shown: list[str] = []
    tail = StderrTail(RedactingSink(Redactor([secret]), shown.append))
    for start in range(0, len(line), chunk):
        tail.feed(line[start : start + chunk])
    tail.close()
    assert len(shown) >= 2
    assert not _leaks("".join(shown), secret)
    assert not any(_leaks(kept, secret) for kept in tail.tail())
    assert "".join(shown).count("x") == at  # nothing lost, nothing repeated


@settings(max_examples=100, deadline=None)
@given(password=strong_secrets | weak_secrets)
def test_connection_string_parts_the_old_parser_missed(password: str) -> None:
    braced = password.replace("}", "}}")
    sig = urllib.parse.quote(password, safe="")
    cases = {
        f"Driver={{ODBC Driver 18}};Server=db;Uid=app;Pwd={{{braced}}};Encrypt=yes": password,
        f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=x&sig={sig}&se=1": sig,
        f"postgresql://db/x?user=app&password={sig}&sslmode=require": sig,
    }
    for text, expected in cases.items():
        assert expected in credential_parts(text)
        known = Redactor(secret_values({"connection_string": text}))
        for redact in (known, Redactor()):  # known, and not even known: the shape gives it away
            out = redact(f"cannot connect: {text}")
            assert expected not in out, out
            assert password not in out or len(password) < 8, out


def test_a_short_dev_password_is_masked_where_it_stands_as_a_secret_only() -> None:
    """Issue 27: the development password ``dstream`` must not turn every "dstream" into ***."""
    redact = Redactor(secret_values({"dsn": "postgresql://dstream:dstream@localhost/dstream"}))
    assert not is_strong("dstream")
    hint = "slot dstream_orders is missing: run `dstream init orders` in /home/dstream"
    assert redact(hint) == hint
    for leak in (
        "password=dstream;",
        'config {"password": "dstream"}',
        "postgres://dstream:dstream@localhost/x",
        "Pwd={dstream};",
        "PASSWORD = 'dstream'",
    ):
        assert "dstream" not in redact(leak).split("@")[0].split("//")[-1].split(":", 1)[-1], redact(leak)


def test_a_long_random_secret_is_masked_everywhere_even_glued_to_text() -> None:
    redact = Redactor(["Hunter2Secret"])
    assert redact("xHunter2Secretx and Hunter2Secret") == f"x{MASK}x and {MASK}"


def test_values_of_credential_keys_are_masked_even_when_unknown() -> None:
    redact = Redactor()
    assert redact("AccountKey=abc/def==;EndpointSuffix=x") == f"AccountKey={MASK};EndpointSuffix=x"
    assert redact("https://u:pw@host/x") == f"https://u:{MASK}@host/x"
    assert redact("nothing secret here") == "nothing secret here"


def test_container_env_and_any_connection_string_count_as_secrets(tmp_path: object) -> None:
    assert "Lit3ralPw99" in secret_values({"endpoint": "postgres://app:Lit3ralPw99@db/x"})
    assert "app:Lit3ralPw99" in secret_values({"url": "postgres://app:Lit3ralPw99@db/x"})
    assert "EnvInContainer99" in secret_values({"API_TOKEN": "EnvInContainer99"})
