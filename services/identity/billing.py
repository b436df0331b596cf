"""Plans: upgrading records the billing name and postal address and writes an accounting record.

Card data is never accepted: payment happens at the payment processor, which hands back a
reference. Any text field carrying something that looks like a card number (13 to 19 digits,
spaces or dashes between them, passing the Luhn check) refuses the whole request.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass

from services.identity.settings import Plan
from services.identity.store import Account, Store
from services.kit.clock import Clock
from services.kit.errors import InvalidArgument, NotFound

log = logging.getLogger("leadmesh.identity.billing")

# Digits with up to two separators (spaces, dashes, dots, slashes…) between any two of them: the
# ways people type a card number.
_DIGIT_RUN = re.compile(r"\d(?:[\s\-./_,]{0,2}\d)*")
ADDRESS_FIELDS = ("line1", "line2", "city", "postal_code", "country")
REQUIRED_ADDRESS_FIELDS = ("line1", "city", "postal_code", "country")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def carries_card_number(text: str) -> bool:
    """A run of 13 to 19 digits passing Luhn; in a longer run (a number followed by an expiry
    date, say), its first or last 13 to 19 digits."""
    for match in _DIGIT_RUN.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19:
            candidates = [digits]
        elif len(digits) > 19:
            lengths = range(13, 20)
            candidates = [digits[:n] for n in lengths] + [digits[-n:] for n in lengths]
        else:
            continue
        if any(luhn_valid(candidate) for candidate in candidates):
            return True
    return False


@dataclass(frozen=True)
class PlanChange:
    plan: str
    billing_name: str
    billing_address: dict[str, str]
    payment_reference: str


class Billing:
    def __init__(self, store: Store, plans: dict[str, Plan], clock: Clock) -> None:
        self.store = store
        self.plans = plans
        self.clock = clock

    def validate(self, change: PlanChange) -> Plan:
        fields = {
            "billing_name": change.billing_name,
            "payment_reference": change.payment_reference,
            **{f"billing_address.{k}": v for k, v in change.billing_address.items()},
        }
        for name, value in fields.items():
            if value and carries_card_number(value):
                raise InvalidArgument(
                    "CARD_DATA_REFUSED",
                    "card data is never accepted; pay at the payment processor and send its "
                    "payment reference",
                    field=name,
                )
        plan = self.plans.get(change.plan)
        if plan is None:
            known = ", ".join(sorted(self.plans))
            raise InvalidArgument("UNKNOWN_PLAN", f"plans are: {known}", field="plan")
        if plan.amount == 0:
            return plan
        required = {
            "billing_name": change.billing_name,
            "payment_reference": change.payment_reference,
            **{
                f"billing_address.{k}": change.billing_address.get(k, "")
                for k in REQUIRED_ADDRESS_FIELDS
            },
        }
        for name, value in required.items():
            if not value.strip():
                raise InvalidArgument(
                    "INVALID_BILLING_DETAILS", f"{name} is required for a paid plan", field=name
                )
        if not re.fullmatch(r"[A-Za-z]{2}", change.billing_address["country"].strip()):
            raise InvalidArgument(
                "INVALID_BILLING_DETAILS",
                "country is an ISO 3166-1 alpha-2 code",
                field="billing_address.country",
            )
        return plan

    async def change_plan(self, account_id: str, change: PlanChange) -> Account:
        plan = self.validate(change)
        now = self.clock.now()
        address = {k: change.billing_address.get(k, "").strip() for k in ADDRESS_FIELDS}
        address["country"] = address["country"].upper()
        async with self.store.begin() as tx:
            if await tx.account(account_id) is None:
                raise NotFound("ACCOUNT_NOT_FOUND", "no such account")
            if plan.amount == 0:
                await tx.update_account(account_id, plan=change.plan, update_time=now)
            else:
                await tx.update_account(
                    account_id,
                    plan=change.plan,
                    billing_name=change.billing_name.strip(),
                    billing_address=address,
                    update_time=now,
                )
                await tx.add_accounting_record(
                    {
                        "id": str(uuid.uuid4()),
                        "account_id": account_id,
                        "plan": change.plan,
                        "amount": plan.amount,
                        "currency": plan.currency,
                        "billing_name": change.billing_name.strip(),
                        "billing_address": address,
                        "payment_reference": change.payment_reference.strip(),
                        "record_time": now,
                    }
                )
            account = await tx.account(account_id)
        log.info("plan changed", extra={"account_id": account_id, "plan": change.plan})
        assert account is not None
        return account
