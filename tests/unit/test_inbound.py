"""Client text: JSON that nothing downstream could encode, and integers ``int()`` is lax about."""

from __future__ import annotations

import pytest

from sockudo import inbound


@pytest.mark.parametrize(
    "text",
    [
        '{"channel":"a\\ud800"}',  # a value
        '{"a\\udfff":1}',  # a key
        '{"data":{"deep":[1,["x\\uDBFF"]]}}',  # nested, upper-case hex
        '["\\ude00\\ud83d"]',  # a pair in the wrong order is two lone halves
        '"\\ud83d"',  # a bare string
    ],
)
def test_lone_surrogate_escapes_are_refused(text: str) -> None:
    with pytest.raises(inbound.JsonInputError, match="lone surrogate"):
        inbound.loads(text)
    with pytest.raises(inbound.JsonInputError):
        inbound.loads(text.encode())


def test_escaped_pairs_literal_backslashes_and_plain_text_pass() -> None:
    assert inbound.loads('{"e":"\\ud83d\\ude00"}') == {"e": "\U0001f600"}
    assert inbound.loads('{"e":"\\\\ud800"}') == {"e": "\\ud800"}  # the six characters
    assert inbound.loads('{"é":"ü\\u00e9"}'.encode()) == {"é": "üé"}


def test_bytes_must_be_strict_utf8_and_constants_are_not_json() -> None:
    with pytest.raises(UnicodeDecodeError):
        inbound.loads(b'{"c":"\xed\xa0\x80"}')  # a surrogate encoded in UTF-8 bytes
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(inbound.JsonInputError, match=constant):
            inbound.loads(f'{{"n":{constant}}}')


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("5", 5), ("-5", -5), ("18446744073709551616", 2**64), ("9" * 4000, 10**4000 - 1)],
)
def test_decimal_reads_ascii_digits(text: str, value: int) -> None:
    assert inbound.decimal(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 5",
        "5 ",
        "+5",
        "1_0",
        "\u0665",
        "\uff15",
        "\u00b2",
        "0x10",
        "1e3",
        "5.0",
        "-",
        "1" * 4001,
    ],
)
def test_decimal_refuses_what_int_would_take_or_choke_on(text: str) -> None:
    assert inbound.decimal(text) is None
