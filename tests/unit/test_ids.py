"""``random_uuid`` is indistinguishable from ``str(uuid.uuid4())`` in form."""

from __future__ import annotations

import uuid

from sockudo.ids import random_uuid


def test_random_uuid_is_canonical_uuid4_text() -> None:
    seen = set()
    variants = set()
    for _ in range(5000):
        text = random_uuid()
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical lower-case 8-4-4-4-12 form
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        variants.add(text[19])
        seen.add(text)
    assert len(seen) == 5000
    assert variants == set("89ab")  # all four variant digits occur: the random bits reach them
