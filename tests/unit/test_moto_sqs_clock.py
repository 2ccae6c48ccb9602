"""The embedded stack's shortcut for moto's SQS clock gives the same milliseconds as moto's own conversion."""

from __future__ import annotations

from datetime import datetime

import moto.sqs.models as sqs_models
import pytest

from rappel_ops.embedded import fast_moto_sqs_clock

pytestmark = pytest.mark.unit


def test_same_milliseconds_and_restored_afterwards() -> None:
    original = sqs_models.unix_time_millis
    moment = datetime(2027, 3, 1, 9, 0, 0, 123000)
    with fast_moto_sqs_clock():
        assert sqs_models.unix_time_millis is not original
        assert sqs_models.unix_time_millis(moment) == original(moment)
        fast, slow = sqs_models.unix_time_millis(), original()
        assert abs(fast - slow) < 1000  # both "now", read a moment apart
    assert sqs_models.unix_time_millis is original
