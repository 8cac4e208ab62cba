"""Requests for input and their answers: what a tool may ask, what an answer must fit, what `ask` returns."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import inputs
from orchestrator.errors import InvalidParamsError, ToolError

APPROVAL = inputs.APPROVAL_SCHEMA


def test_a_request_keeps_its_message_and_schema() -> None:
    assert inputs.request("go", "Deploy?", APPROVAL, 5.0) == {"message": "Deploy?", "schema": dict(APPROVAL),
                                                               "asked_at": 5.0}
    assert inputs.request("go", "Any", None, 1.0)["schema"] == {"type": "object"}


@pytest.mark.parametrize(("key", "message", "schema", "why"), [
    ("", "m", None, "key"),
    ("k" * 129, "m", None, "key"),
    ("k", "m" * 4001, None, "message"),
    ("k", "m", {"type": "nonsense"}, "not a JSON Schema"),
    ("k", "m", {"enum": ["x" * 20_000]}, "exceeds"),
])
def test_a_bad_request_is_the_tools_error(key: str, message: str, schema: Any, why: str) -> None:
    with pytest.raises(ToolError, match=why):
        inputs.request(key, message, schema, 0.0)


def test_an_answer_must_fit_the_schema_and_names_the_field() -> None:
    request = inputs.request("approval", "Deploy?", APPROVAL, 0.0)
    assert inputs.checked_answer(request, {"approve": True}, "accept", "params.input") == {
        "action": "accept", "content": {"approve": True}}
    with pytest.raises(InvalidParamsError) as refused:
        inputs.checked_answer(request, {"approve": "yes", "extra": 1}, "accept", "params.input")
    assert set(refused.value.fields) == {"params.input.approve", "params.input.extra"}
    with pytest.raises(InvalidParamsError) as missing:
        inputs.checked_answer(request, {}, "accept", "params.input")
    assert missing.value.fields == {"params.input.approve": "required"}
    assert inputs.checked_answer(request, None, "decline", "params.input") == {"action": "decline"}  # unchecked


def test_ask_returns_the_content_of_an_accepted_answer_and_raises_on_a_refusal() -> None:
    assert inputs.answer_of("k", {"action": "accept", "content": [1, 2]}) == [1, 2]
    with pytest.raises(ToolError, match="'k' was declined"):
        inputs.answer_of("k", {"action": "decline"})
    with pytest.raises(ToolError, match="'k' was cancelled"):
        inputs.answer_of("k", {"action": "cancel"})


def test_the_key_answered_is_the_one_named_or_the_only_one_pending() -> None:
    assert inputs.pending_key({"a": {}}, None) == "a"
    assert inputs.pending_key({"a": {}, "b": {}}, None) is None
    assert inputs.pending_key({}, None) is None
    assert inputs.pending_key({"a": {}}, "z") == "z"


class Answers:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def progress(self, data: Any) -> None: ...

    async def checkpoint(self, state: Any, progress: Any = None) -> None: ...

    async def ask(self, key: str, message: str, schema: Any = None) -> Any:
        assert (key, schema) == (inputs.APPROVAL_KEY, APPROVAL)
        return self.answer


async def test_an_approval_goes_ahead_only_when_approved() -> None:
    await inputs.approve(Answers({"approve": True}), "Deploy?")
    with pytest.raises(ToolError, match="not approved: too risky"):
        await inputs.approve(Answers({"approve": False, "comment": "too risky"}), "Deploy?")
