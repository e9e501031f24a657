"""count_tokens answers: an odd 200 is a malformed answer (retried by the one client loop),
never a KeyError or JSONDecodeError escaping as an internal error."""

from __future__ import annotations

import pytest

from pipeline.providers.base import MalformedAnswer
from pipeline.send.token_count import parse_count


def test_a_count_is_its_input_tokens() -> None:
    answer = parse_count(b'{"input_tokens": 1234}')
    assert answer.usage is not None and answer.usage.input_tokens == 1234


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>", b"[]", b"{}", b'{"input_tokens": "12"}', b'{"input_tokens": -1}',
     b'{"input_tokens": 1e30}', b'{"tokens": 5}'],
)  # fmt: skip
def test_an_odd_count_answer_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        parse_count(body)
