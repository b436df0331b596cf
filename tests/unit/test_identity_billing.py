"""Plans: billing details required for paid plans, card data refused wherever it hides."""

from __future__ import annotations

import pytest

from services.identity.billing import Billing, PlanChange, carries_card_number, luhn_valid
from services.identity.settings import DEFAULT_PLANS
from services.kit.clock import SettableClock
from services.kit.errors import InvalidArgument

ADDRESS = {
    "line1": "1 Main St",
    "line2": "",
    "city": "Berlin",
    "postal_code": "10115",
    "country": "de",
}


def change(**overrides) -> PlanChange:
    values = dict(
        plan="pro",
        billing_name="Ann Example",
        billing_address=dict(ADDRESS),
        payment_reference="pi_3NxYzAbc",
    )
    values.update(overrides)
    return PlanChange(**values)


billing = Billing(store=None, plans=DEFAULT_PLANS, clock=SettableClock())  # type: ignore[arg-type]


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "card: 5500005555555559 thanks",
        "378282246310005",
        "pi-4111111111111111",
        "4111.1111.1111.1111",
        "4111/1111/1111/1111",
        "4111  1111 1111 1111",
        "4111 1111 1111 1111 12/29",
        "41111111111111111111",
    ],
)
def test_card_numbers_are_recognised(text: str):
    assert carries_card_number(text)


@pytest.mark.parametrize("text", ["10115", "pi_3NxYzAbc", "4111111111111112", "+49 30 1234567"])
def test_other_numbers_are_not(text: str):
    assert not carries_card_number(text)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"payment_reference": "4111111111111111"}, "payment_reference"),
        ({"billing_name": "Ann 4111 1111 1111 1111"}, "billing_name"),
        ({"billing_address": {**ADDRESS, "line2": "5500-0055-5555-5559"}}, "billing_address.line2"),
    ],
)
def test_card_data_is_refused_in_any_field(overrides, field: str):
    with pytest.raises(InvalidArgument) as refused:
        billing.validate(change(**overrides))
    assert refused.value.reason == "CARD_DATA_REFUSED" and refused.value.field == field
    assert "4111" not in refused.value.message and "5500" not in refused.value.message


def test_paid_plans_need_billing_details_and_free_does_not():
    for overrides, field in (
        ({"billing_name": " "}, "billing_name"),
        ({"payment_reference": ""}, "payment_reference"),
        ({"billing_address": {**ADDRESS, "city": ""}}, "billing_address.city"),
        ({"billing_address": {**ADDRESS, "country": "Germany"}}, "billing_address.country"),
    ):
        with pytest.raises(InvalidArgument) as refused:
            billing.validate(change(**overrides))
        assert refused.value.reason == "INVALID_BILLING_DETAILS"
        assert refused.value.field == field
    assert billing.validate(change(plan="free", billing_name="", payment_reference="")).amount == 0


def test_unknown_plans_are_refused():
    with pytest.raises(InvalidArgument) as refused:
        billing.validate(change(plan="platinum"))
    assert refused.value.reason == "UNKNOWN_PLAN"
