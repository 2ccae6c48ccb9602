"""The simulation harness's own shortcuts agree with the production code they stand in for."""

from __future__ import annotations

import pytest

from core import store
from core.planning import handle_clinic_event
from rappel_local.simulate import _earliest_due
from tests.helpers import dose, patient

pytestmark = pytest.mark.integration


def test_next_wake_read_from_moto_equals_the_due_index_queries(aws) -> None:
    store.bind(aws.settings)
    assert _earliest_due(aws.settings) is None and store.earliest_due(aws.settings.DUE_INDEX_SHARDS) is None
    handle_clinic_event(patient(), aws.settings)
    handle_clinic_event(dose(due_date="2027-03-20"), aws.settings)
    handle_clinic_event(dose(appointment_id="a2", due_date="2027-03-11"), aws.settings)
    expected = store.earliest_due(aws.settings.DUE_INDEX_SHARDS)
    assert expected is not None and expected.isoformat().startswith("2027-03-04T09:00")
    assert _earliest_due(aws.settings) == expected
