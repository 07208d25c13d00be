"""Handing on a key's waiting messages is bounded per step, and the sweep finishes the job."""

import pytest

from inbox.models import InboxMessage
from inbox.processing import DRAIN_STEP, retry_due
from inbox.testing import deliver
from tests.testapp.models import Effect

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_the_head_of_a_long_waiting_key_hands_on_its_successors_in_bounded_steps(names):
    successors = DRAIN_STEP * 2 + 30
    for sequence in range(2, successors + 2):
        deliver("test.effect", {}, id=f"s{sequence}", key="long", sequence=sequence)
    assert InboxMessage.objects.waiting().filter(consumer__endswith=":effect").count() == successors

    deliver("test.effect", {}, id="s1", key="long", sequence=1)
    # The arrival handled itself and one step of its successors, then returned.
    assert Effect.objects.filter(consumer="effect").count() == 1 + DRAIN_STEP

    sweeps = 0
    while InboxMessage.objects.waiting().exists():
        retry_due()
        sweeps += 1
        assert sweeps <= 3, "the sweep does not make progress"
    handled = list(
        Effect.objects.filter(consumer="effect").order_by("id").values_list("sequence", flat=True)
    )
    assert handled == list(range(1, successors + 2))
