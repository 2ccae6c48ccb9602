"""Figure 6: the sender's memory while it handles its largest batch (SMS_BATCH_SIZE records).

Run as its own process (`python -m bench.memory N`, which `bench.run` does) so that its peak RSS is not the
bench's: the process imports what the Lambda would and builds the stack on moto in-process. It prints one JSON
object:

* two full batches are seeded and dispatched; the first is sent untraced, the sender's first invocation (provider
  client, OAuth token, secrets), with the process's resident set (VmRSS) and its high-water mark (VmHWM) read
  before and after it: rss_growth_bytes is what that invocation added to the peak, or to the resident set;
* the second is sent under tracemalloc: tracemalloc_peak_bytes is the most Python memory allocated at once during
  that invocation, above what was allocated before it (the sender's working set for a full batch);
* process_peak_rss_bytes (VmHWM at the end) is the whole process's peak; the process also holds moto and the
  Orange simulator, which a Lambda would not, so it bounds the sender's footprint from above.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(seed: int) -> dict[str, Any]:
    import boto3

    from bench.burst import seed_burst
    from bench.overhead import _receive, fresh_stack
    from core import clock
    from core.store import iso
    from rappel_local.embedded import invoke, quiet_logs, schedule_event, sqs_event

    with fresh_stack("memory") as (stack, settings, simulator), quiet_logs():
        batch_size = settings.SMS_BATCH_SIZE
        seed_burst(2 * batch_size, seed, settings)
        invoke("dispatch_due", schedule_event("dispatch", iso(clock.now())))
        sqs = boto3.client("sqs", region_name=settings.AWS_REGION)
        first = sqs_event(_receive(sqs, settings.SEND_QUEUE_URL, batch_size), stack.send_queue_arn)
        second = sqs_event(_receive(sqs, settings.SEND_QUEUE_URL, batch_size), stack.send_queue_arn)
        # The first batch untraced (the sender's first invocation: provider client, token, secrets): RSS.
        rss_before, hwm_before = _status_bytes("VmRSS"), _status_bytes("VmHWM")
        invoke("send_sms", first)
        rss_after, hwm_after = _status_bytes("VmRSS"), _status_bytes("VmHWM")
        # The second batch under tracemalloc (which costs memory of its own, so not mixed with the RSS figure).
        tracemalloc.start()
        baseline, _ = tracemalloc.get_traced_memory()
        invoke("send_sms", second)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {
            "batch_size": batch_size,
            "records": len(second["Records"]),
            "sent": len(simulator.accepted),
            "tracemalloc_peak_bytes": peak - baseline,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "rss_peak_before_bytes": hwm_before,
            "rss_peak_after_bytes": hwm_after,
            "rss_growth_bytes": (hwm_after if hwm_after > hwm_before else rss_after) - rss_before,
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child started from a big parent (the
            # bench) would report the parent's peak.
            "process_peak_rss_bytes": _status_bytes("VmHWM"),
        }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 0)))
