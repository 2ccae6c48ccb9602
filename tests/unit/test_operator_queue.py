"""How `rappel retally` and `rappel replay-events` work through an operator's queue. The queue is scripted: a run
longer than the receive's visibility (a few hundred clinic events replayed from a laptop) cannot be made in a test
otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from core.settings import build_settings
from rappel_cli import operations


class ScriptedQueue:
    """Answers ReceiveMessage with the pages given, in turn; records what was deleted and made visible again."""

    def __init__(self, pages: list[list[dict[str, str]]]) -> None:
        self.pages = pages
        self.deleted: list[str] = []
        self.shown: list[str] = []

    def receive_message(self, **_: Any) -> dict[str, Any]:
        return {"Messages": self.pages.pop(0) if self.pages else []}

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:
        self.deleted.append(ReceiptHandle)

    def change_message_visibility(self, QueueUrl: str, ReceiptHandle: str, VisibilityTimeout: int) -> None:
        self.shown.append(ReceiptHandle)


def test_a_message_left_that_comes_back_in_the_same_run_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Left messages were remembered by nothing but their handle: one whose visibility lapsed during a long run came
    back, was tried again (forever while the cause lasted), and its first handle, no longer valid, failed the run's
    end with a traceback instead of the table of what was applied."""
    failing = {"MessageId": "m1", "ReceiptHandle": "h1", "Body": "fails"}
    applied = {"MessageId": "m2", "ReceiptHandle": "h2", "Body": "applies"}
    again = {**failing, "ReceiptHandle": "h1-later"}
    queue = ScriptedQueue([[failing], [again, applied], [again]])
    monkeypatch.setattr(operations.boto3, "client", lambda *_, **__: queue)
    tried: list[str] = []

    def one(body: str) -> dict[str, Any]:
        tried.append(body)
        return {"result": "left" if body == "fails" else "applied"}

    rows = operations._work_through("queue-url", build_settings(), one)

    assert tried == ["fails", "applies"]
    assert [row["result"] for row in rows] == ["left", "applied"]
    assert (queue.deleted, queue.shown) == (["h2"], ["h1-later"])
