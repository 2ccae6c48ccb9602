"""The message state machine: the statuses a reminder goes through and the moves allowed between them.

Every status change in the store goes through `check_transition`, and the store turns the allowed source
statuses into the condition of its write, so an illegal move is refused twice: here, and by DynamoDB.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Public statuses of a message."""

    PENDING = "pending"
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


# Who may move to where. QUEUED -> PENDING is a retry after a transient error (explicit, with attempts + 1 and the
# error recorded, never silent), or a deferral; DEAD_LETTER -> PENDING is a redrive (an operator's gesture, recorded,
# with a fresh set of retries); FAILED ->
# DELIVERED is a late DeliveredToTerminal after DeliveryImpossible, which the provider says can happen;
# CANCELLED -> PENDING is a revival: the cause of the cancellation was reversed (the dose moved back, the family
# opted in again) while the deadline is open, and the store refuses it for a message the provider may have taken;
# CANCELLED -> SENT is the record catching up: the provider had taken the SMS before the cancellation was written
# (a cancellation during the request, or a crash before the sent write), and a cancelled reminder is one no SMS
# carried; DEAD_LETTER -> SENT too: the receipt of an ambiguous send that was dead-lettered shows the provider took it;
# PENDING (and DEAD_LETTER) -> SENT: a send queue record delivered to two senders at once, one sender's failure
# written (a retry, a deferral, a dead letter) while the other's request went out and was taken.
ALLOWED: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.QUEUED, Status.SENT, Status.CANCELLED, Status.EXPIRED}),
    Status.QUEUED: frozenset(
        {
            Status.PENDING,
            Status.SENT,
            Status.FAILED,
            Status.DEAD_LETTER,
            Status.CANCELLED,
            Status.EXPIRED,
        }
    ),
    Status.SENT: frozenset({Status.DELIVERED, Status.FAILED}),
    Status.FAILED: frozenset({Status.DELIVERED}),
    Status.DEAD_LETTER: frozenset({Status.PENDING, Status.SENT, Status.CANCELLED, Status.EXPIRED}),
    Status.DELIVERED: frozenset(),
    Status.CANCELLED: frozenset({Status.PENDING, Status.SENT}),
    Status.EXPIRED: frozenset(),
}

# Statuses after which nothing more will be sent for the message.
SETTLED: frozenset[Status] = frozenset({Status.SENT, Status.DELIVERED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})
# Statuses that end a message's life: they get a retention TTL (a revived cancellation loses it again).
TERMINAL: frozenset[Status] = frozenset({Status.DELIVERED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})
# Statuses of a reminder that may still go out: planning cancels these when it is no longer wanted.
OUTSTANDING: frozenset[Status] = frozenset({Status.PENDING, Status.QUEUED, Status.DEAD_LETTER})
# Statuses in which a message waits in the `due` index for the dispatcher (a claimed one is on the send queue).
DISPATCHABLE: frozenset[Status] = frozenset({Status.PENDING})


class IllegalTransition(Exception):
    """A move the state machine does not allow."""

    def __init__(self, source: Status, target: Status) -> None:
        super().__init__(f"illegal transition {source} -> {target}")
        self.source = source
        self.target = target


def sources_of(target: Status) -> frozenset[Status]:
    """Every status from which `target` may be reached."""
    return frozenset(source for source, targets in ALLOWED.items() if target in targets)


def check_transition(sources: frozenset[Status], target: Status) -> frozenset[Status]:
    """`sources` unchanged if every one of them may move to `target`; raises IllegalTransition otherwise."""
    for source in sorted(sources):
        if target not in ALLOWED[source]:
            raise IllegalTransition(source, target)
    if not sources:
        raise ValueError("a transition needs at least one source status")
    return sources
