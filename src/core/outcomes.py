"""Did the reminder work, and which families to call: the state Rappel keeps per appointment. Pure, no I/O.

One state per appointment (`AppointmentState`, stored in the ops table by `core.store`) says what the clinic
system told us about the dose (status, due date, date given, clinic) and what the reminders achieved (the first
reminder delivered: the family was *reached*), and carries the follow-up of a family not reached.

**Outcome counters** are never incremented by hand: each state *contributes* to a few cells (`contribution`), and a
change of state adds `contribution(new) - contribution(old)` (`outcome_deltas`). So every transition — scheduled,
reached, dose given by or after its due date, cancelled, rebooked, a given dose corrected back to scheduled, moved
to another clinic or month — keeps the counts equal to what a scan of the states would give, and a state written
once (a conditional write on its version) counts once. "Not given" is never stored: `appointments - given`.

**Follow-ups**: a family not reached whose dose is overdue gets one follow-up (`FollowUpNeeded`), closed by the dose
given or the appointment cancelled (`FollowUpClosed`); never a second one for the same appointment. The events go
out through an outbox: the state records what is still to be published, and `index_slot` puts it where the
follow-up pass finds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Final

SCHEDULED: Final[str] = "scheduled"
ADMINISTERED: Final[str] = "administered"
COUNTED_STATUSES: Final[frozenset[str]] = frozenset({SCHEDULED, ADMINISTERED})

REACHED: Final[str] = "reached"
NOT_REACHED: Final[str] = "not_reached"
GROUPS: Final[tuple[str, str]] = (REACHED, NOT_REACHED)
NO_REMINDER: Final[str] = "none"  # the reminder type of a family not reached
APPOINTMENTS: Final[str] = "appointments"
GIVEN_BY_DUE_DATE: Final[str] = "given_by_due_date"
GIVEN_LATER: Final[str] = "given_later"
NOT_GIVEN: Final[str] = "not_given"
FIGURES: Final[tuple[str, ...]] = (APPOINTMENTS, GIVEN_BY_DUE_DATE, GIVEN_LATER, NOT_GIVEN)
NO_CLINIC: Final[str] = "-"

OPEN: Final[str] = "open"
CLOSED: Final[str] = "closed"

# A counter cell: (sk of the ops item `OUTCOMES` / `<due month>#<clinic>`, attribute `<group>#<reminder type>#<name>`).
Cell = tuple[str, str]


@dataclass(frozen=True)
class Appointment:
    """What the clinic system says of a dose, as stored (`AppointmentRecord`)."""

    appointment_id: str
    patient_id: str
    clinic: str | None
    due_date: str  # YYYY-MM-DD
    status: str  # scheduled | administered | cancelled
    administered_on: str | None = None


@dataclass(frozen=True)
class AppointmentState:
    """The outcome and follow-up state of one appointment (times are `store.iso` texts)."""

    appointment_id: str
    patient_id: str = ""
    clinic: str | None = None
    due_date: str = ""
    status: str = ""
    administered_on: str | None = None
    overdue_at: str = ""  # the dose is overdue from then on: the start of the day after its due date, local time
    reached_type: str | None = None  # the reminder whose delivery first reached the family
    reached_at: str | None = None
    watch_at: str | None = None  # when to look again whether the family needs a follow-up
    follow_up: str | None = None  # open | closed; one at a time (see `episode`)
    follow_up_at: str | None = None  # when it was opened
    closed_at: str | None = None
    closed_why: str | None = None
    reasons: tuple[str, ...] = ()
    phone: str | None = None  # masked
    needed_published: bool = False
    closed_published: bool = False
    # Follow-ups this appointment had before the current one: one closed by a dose given or a cancellation that was
    # then corrected (the dose due again) gives way to a new one, once its close is announced.
    episode: int = 0
    version: int = 0

    @property
    def reached(self) -> bool:
        """Whether a reminder of this appointment was delivered (while its dose was still due)."""
        return self.reached_type is not None

    @property
    def watching(self) -> bool:
        """Whether the family may still need a follow-up and a time to look again is set."""
        return self.status == SCHEDULED and not self.reached and self.follow_up is None and self.watch_at is not None

    @property
    def unpublished(self) -> tuple[str, ...]:
        """The follow-up events still to publish, in order: `needed`, then `closed`. A follow-up closed before its
        FollowUpNeeded was marked published gets its FollowUpClosed all the same: that FollowUpNeeded may have gone
        out (the mark is written after the event, and a crash or the close itself can come between the two), and a
        clinic system ignores a close of a follow-up it never heard of more easily than it finds one never closed."""
        if self.follow_up == OPEN and not self.needed_published:
            return ("needed",)
        if self.follow_up == CLOSED and not self.closed_published:
            return ("closed",)
        return ()


class Slot(StrEnum):
    """Where a state sits in the ops table's sparse `follow_up` index (or nowhere)."""

    DUE = "due"  # the follow-up pass looks at it once `at` has come: an event to publish, or a family to check
    OPEN = "open"  # an open follow-up, announced: what `rappel followup` lists


def index_slot(state: AppointmentState) -> tuple[Slot, str] | None:
    """The state's place in the `follow_up` index: (slot, at), or None when nothing is left to do or list."""
    if state.unpublished:
        at = state.closed_at if state.follow_up == CLOSED else state.follow_up_at
        return Slot.DUE, at or state.overdue_at
    if state.follow_up == OPEN:
        return Slot.OPEN, state.follow_up_at or state.overdue_at
    if state.watching and state.watch_at is not None:
        return Slot.DUE, state.watch_at
    return None


def may_rearm(state: AppointmentState | None, now: str) -> bool:
    """Whether a reminder of this appointment ending unreached now could make the pass look at it again
    (`store.rearm_follow_up`'s condition, judged on a state in hand): a scheduled dose, overdue, whose family is
    not reached and has no follow-up yet. True for an unknown state: only the write can tell."""
    if state is None:
        return True
    return state.status == SCHEDULED and not state.reached and state.follow_up is None and state.overdue_at <= now


# ---------------------------------------------------------------------------------------------- transitions


def synced(old: AppointmentState | None, appointment: Appointment, overdue_at: str, now: str) -> AppointmentState:
    """The state after planning applied a clinic event to `appointment` (its stored form).

    A family reached stays reached while its dose keeps its patient and due date: a reminder about another date,
    or to another family, did not tell it of this one (a reschedule puts it back among those to reach, and to call
    if nothing about the new date reaches it). A scheduled dose not reached is watched from its overdue time (again
    from the new one after a reschedule). A dose given or the appointment cancelled closes an open follow-up.
    """
    base = old if old is not None else AppointmentState(appointment.appointment_id)
    if old is not None and not about_this_dose(old, appointment.due_date, appointment.patient_id):
        base = replace(base, reached_type=None, reached_at=None)
    state = replace(
        base,
        patient_id=appointment.patient_id,
        clinic=appointment.clinic,
        due_date=appointment.due_date,
        status=appointment.status,
        administered_on=appointment.administered_on if appointment.status == ADMINISTERED else None,
        overdue_at=overdue_at,
    )
    if state.status == SCHEDULED and not state.reached and state.follow_up is None:
        keep = old is not None and old.status == SCHEDULED and old.overdue_at == overdue_at and old.watch_at
        state = replace(state, watch_at=old.watch_at if keep and old is not None else overdue_at)
    else:
        state = replace(state, watch_at=None)
    if state.follow_up == OPEN and state.status != SCHEDULED:
        why = "dose given" if state.status == ADMINISTERED else f"appointment {state.status}"
        state = replace(state, follow_up=CLOSED, closed_at=now, closed_why=why)
    return _due_again(state)


def _due_again(state: AppointmentState) -> AppointmentState:
    """A closed and announced follow-up whose dose is due again and whose family is not reached (the dose given, or
    the appointment cancelled, then corrected or rebooked; a family reached about a date since moved) gives way to
    a new one, watched from the overdue time like any family; else the state as it is."""
    if state.follow_up != CLOSED or not state.closed_published or state.status != SCHEDULED or state.reached:
        return state
    return replace(
        state,
        episode=state.episode + 1,
        follow_up=None,
        follow_up_at=None,
        closed_at=None,
        closed_why=None,
        reasons=(),
        phone=None,
        needed_published=False,
        closed_published=False,
        watch_at=state.overdue_at,
    )


def about_this_dose(state: AppointmentState, due_date: str | None, patient_id: str | None) -> bool:
    """Whether a reminder (or a dose record) for `due_date` and `patient_id` is about the dose as `state` has it
    (a state that does not know them yet takes anything)."""
    return (not state.due_date or state.due_date == due_date) and (
        not state.patient_id or state.patient_id == patient_id
    )


def with_delivery(state: AppointmentState, reminder_type: str, now: str) -> AppointmentState | None:
    """The state once a reminder of the appointment was delivered; None when that changes nothing (reached
    already, or the dose no longer due: a receipt arriving after the dose was given does not make it reached). A
    follow-up opened meanwhile (every reminder seemed to fail, then a late DeliveredToTerminal) is closed: the family
    was reached, and nobody needs to call it."""
    if state.reached or state.status != SCHEDULED:
        return None
    state = replace(state, reached_type=reminder_type, reached_at=now, watch_at=None)
    if state.follow_up == OPEN:
        state = replace(state, follow_up=CLOSED, closed_at=now, closed_why=f"reached: {reminder_type} delivered")
    return state


def watched_from(state: AppointmentState, at: str | None) -> AppointmentState:
    """The state looked at again at `at` (None: no more, until a reminder's failure asks again)."""
    return replace(state, watch_at=at)


def opened(state: AppointmentState, reasons: Iterable[str], phone: str | None, now: str) -> AppointmentState | None:
    """The state with its follow-up opened; None if it may not open (one exists or existed, reached, not due)."""
    if state.follow_up is not None or state.reached or state.status != SCHEDULED:
        return None
    return replace(state, follow_up=OPEN, follow_up_at=now, reasons=tuple(reasons), phone=phone, watch_at=None)


def published(state: AppointmentState, event: str) -> AppointmentState:
    """The state once the follow-up event `event` (`needed` or `closed`) went out."""
    if event == "needed":
        return replace(state, needed_published=True)
    return _due_again(replace(state, closed_published=True))


# ---------------------------------------------------------------------------------------------- outcome counters


def given_when(due_date: str, administered_on: str | None) -> str:
    """`given_by_due_date` when the dose was given on or before its due date, else `given_later`."""
    return GIVEN_BY_DUE_DATE if administered_on is not None and administered_on <= due_date else GIVEN_LATER


def cell_sk(due_date: str, clinic: str | None) -> str:
    """The counter item of a cohort: the due month and the clinic."""
    return f"{due_date[:7]}#{clinic or NO_CLINIC}"


def contribution(state: AppointmentState | None) -> dict[Cell, int]:
    """What one appointment adds to the outcome counters: one appointment in its group (reached, by the reminder
    type that reached it, or not reached), and one dose given by its due date or later. A cancelled appointment,
    or one whose schedule we never had, counts nowhere."""
    if state is None or state.status not in COUNTED_STATUSES or not state.due_date:
        return {}
    group = REACHED if state.reached else NOT_REACHED
    prefix = f"{group}#{state.reached_type or NO_REMINDER}#"
    sk = cell_sk(state.due_date, state.clinic)
    out = {(sk, prefix + APPOINTMENTS): 1}
    if state.status == ADMINISTERED:
        out[(sk, prefix + given_when(state.due_date, state.administered_on))] = 1
    return out


def outcome_deltas(old: AppointmentState | None, new: AppointmentState | None) -> dict[Cell, int]:
    """The counter increments one change of state causes (zeros left out)."""
    before, after = contribution(old), contribution(new)
    deltas = {cell: after.get(cell, 0) - before.get(cell, 0) for cell in before.keys() | after.keys()}
    return {cell: delta for cell, delta in sorted(deltas.items()) if delta}


@dataclass(frozen=True)
class OutcomeRow:
    """The outcome figures of one clinic, group and reminder type."""

    clinic: str
    group: str
    reminder_type: str
    figures: Mapping[str, int] = field(default_factory=dict)


def _empty() -> dict[str, int]:
    return dict.fromkeys(FIGURES, 0)


def outcome_rows(cells: Mapping[str, Mapping[str, float]], *, since_month: str | None = None) -> list[OutcomeRow]:
    """Per clinic, group and reminder type, from the stored cells ({sk: {attribute: value}}), with `not_given`
    derived; `since_month` (YYYY-MM) keeps the cohorts due from that month on."""
    table: dict[tuple[str, str, str], dict[str, int]] = {}
    for sk, attributes in cells.items():
        month, _, clinic = sk.partition("#")
        if since_month is not None and month < since_month:
            continue
        for attribute, value in attributes.items():
            group, reminder_type, name = [*attribute.split("#", 2), "", ""][:3]
            if group not in GROUPS or name not in FIGURES:
                continue
            row = table.setdefault((clinic, group, reminder_type), _empty())
            row[name] += round(value)
    rows = []
    for (clinic, group, reminder_type), figures in sorted(table.items()):
        figures[NOT_GIVEN] = figures[APPOINTMENTS] - figures[GIVEN_BY_DUE_DATE] - figures[GIVEN_LATER]
        rows.append(OutcomeRow(clinic, group, reminder_type, figures))
    return rows


def outcome_summary(rows: Iterable[OutcomeRow], clinic: str | None = None) -> dict[str, dict[str, int]]:
    """`{"reached": {...}, "not_reached": {...}}`, each `{appointments, given_by_due_date, given_later, not_given}`,
    over every clinic or one."""
    out = {group: _empty() for group in GROUPS}
    for row in rows:
        if clinic is not None and row.clinic != clinic:
            continue
        for name in FIGURES:
            out[row.group][name] += row.figures.get(name, 0)
    return out
