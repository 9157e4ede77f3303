"""A request body is checked as the provider will read it: a key twice in one object is refused.

Security review, finding 11: ``{"cccd":"' OR 1=1 --","cccd":"001090012345"}`` passed the contract
(its parser keeps the last value) and reached the provider unchanged, where a parser keeping the
first sees a value that never passed the contract.
"""

from __future__ import annotations

import pytest

from broker.contracts.catalog import Contract
from broker.errors import InvalidRequest
from broker.gateway.exchange import validated

CONTRACT = Contract(
    {
        "type": "object",
        "required": ["cccd"],
        "properties": {"cccd": {"type": "string", "pattern": "^[0-9]{12}$"}, "note": {"type": "string"}},
    }
)


@pytest.mark.parametrize(
    "body",
    [
        b'{"cccd":"\' OR 1=1 --","cccd":"001090012345"}',
        b'{"cccd" : "x", "cccd":"001090012345"}',
        b'{"cccd":"x","\\u0063ccd":"001090012345"}',  # the same key, escaped
        b'{"cccd":"001090012345","note":"a","note":"b"}',
        b'{"cccd":"001090012345","nested":{"k":1,"k":2}}',
    ],
)
def test_a_key_twice_in_one_object_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRequest, match="appears twice") as caught:
        validated(CONTRACT, body)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "body",
    [
        b'{"cccd":"001090012345"}',
        b'{"cccd":"001090012345","note":"he said \\":\\" twice \\":\\""}',  # a string holding '":'
        b'{"cccd":"001090012345","note":"{\\"cccd\\":1,\\"cccd\\":2}"}',  # duplicates inside a string
        b'{ "cccd" :\n "001090012345" }',
    ],
)
def test_bodies_without_a_repeated_key_pass(body: bytes) -> None:
    assert validated(CONTRACT, body)["cccd"] == "001090012345"


def test_a_huge_invalid_value_is_not_echoed_back_whole() -> None:
    """Security review, finding 14: a 900 KB invalid field gave a 1.8 MB answer."""
    import orjson

    body = orjson.dumps({"cccd": "9" * 900_000, "x" * 5000: 1})
    with pytest.raises(InvalidRequest) as caught:
        validated(CONTRACT, body)
    answer = orjson.dumps(caught.value.problem("e1"))
    assert len(answer) < 10_000, len(answer)
    assert "characters)" in answer.decode(), "the echo says it was cut"
