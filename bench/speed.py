"""An in-process speed-up for moto's SQS emulation, with the same behaviour, used while the bench runs.

moto's SQS asks each message whether it is visible or delayed by converting "now" through naive datetimes
(`moto.core.utils.unix_time_millis`: utcnow, utcfromtimestamp(0), a timedelta), and it does so for every message
in the queue on every SendMessage (it reads the queue's attributes, which count them). With the dispatcher
enqueueing a minute's worth of sends at once, that conversion was most of the burst's run time. The shim swaps
it, inside `moto.sqs.models` only, for `time.time() * 1000`, the same number (milliseconds since the epoch) by a
shorter road. Nothing of Rappel and nothing AWS would do is changed; the AWS calls counted are the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime


@contextmanager
def fast_moto_sqs_clock() -> Iterator[None]:
    """Patch `moto.sqs.models.unix_time_millis` for the duration of the block."""
    import moto.sqs.models as sqs_models

    original = sqs_models.unix_time_millis

    def unix_time_millis(dt: datetime | None = None) -> float:
        return time.time() * 1000.0 if dt is None else original(dt)

    sqs_models.unix_time_millis = unix_time_millis
    try:
        yield
    finally:
        sqs_models.unix_time_millis = original
