"""The gRPC face of identity: protobuf in, one use-case object per method, protobuf out; it holds
no rule of its own. Who may call what is `ALLOWED_CALLERS`; the kit's interceptor enforces it and
maps domain errors to status."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2
from leadmesh.identity.v1 import identity_pb2 as pb
from leadmesh.identity.v1 import identity_pb2_grpc

from services.identity import store
from services.identity.accounts import Accounts
from services.identity.billing import ADDRESS_FIELDS, Billing, PlanChange
from services.identity.consents import Consent, Consents
from services.identity.deletion import Deletion
from services.identity.password_change import PasswordChange
from services.identity.password_reset import PasswordReset
from services.identity.sessions import Sessions, SignedIn
from services.kit.callers import acting_user
from services.kit.errors import InvalidArgument
from services.kit.timestamps import to_timestamp

Context = grpc.aio.ServicerContext
SERVICE = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name
_GATEWAY_METHODS = (
    "CreateAccount",
    "Login",
    "AuthenticateSession",
    "EndSession",
    "GetAccount",
    "GetTerms",
    "ChangePassword",
    "UpdatePlan",
    "ListLoginAttempts",
    "ListSessions",
    "RevokeOtherSessions",
    "GetConsents",
    "UpdateConsents",
    "Unsubscribe",
    "RequestPasswordReset",
    "ConfirmPasswordReset",
    "RequestDeletion",
    # The cancel link of the deletion mail: no acting user (the account is disabled).
    "CancelDeletion",
)
ALLOWED_CALLERS = {
    **{f"/{SERVICE}/{method}": frozenset({"gateway"}) for method in _GATEWAY_METHODS},
    f"/{SERVICE}/SendAnnouncement": frozenset({"operator"}),
    f"/{SERVICE}/NotifyAccount": frozenset({"runner"}),
    # Each of these stops (or erases) a deleted account's data in its own store.
    f"/{SERVICE}/ListDeletionRequests": frozenset({"runner", "vault", "retention"}),
    # The last mail to an erased account's address, before identity erases it.
    f"/{SERVICE}/SendErasureCertificate": frozenset({"retention"}),
}


def purpose_name(value: int) -> str:
    if value == pb.PURPOSE_UNSPECIFIED or value not in pb.Purpose.values():
        raise InvalidArgument("UNKNOWN_PURPOSE", "name a consent purpose", field="purpose")
    return pb.Purpose.Name(value).removeprefix("PURPOSE_").lower()


def purpose_value(name: str) -> int:
    return pb.Purpose.Value(f"PURPOSE_{name.upper()}")


def account_pb(account: store.Account) -> pb.Account:
    address = account.billing_address or {}
    return pb.Account(
        id=account.id,
        email=account.email,
        plan=account.plan,
        billing_name=account.billing_name or "",
        billing_address=pb.PostalAddress(**{k: address.get(k, "") for k in ADDRESS_FIELDS}),
        create_time=to_timestamp(account.create_time),
        update_time=to_timestamp(account.update_time),
    )


def session_pb(session: store.Session, current_id: str = "") -> pb.Session:
    return pb.Session(
        id=session.id,
        create_time=to_timestamp(session.create_time),
        last_use_time=to_timestamp(session.last_use_time),
        expire_time=to_timestamp(session.expire_time),
        absolute_expire_time=to_timestamp(session.absolute_expire_time),
        ip_address=session.ip_address,
        user_agent=session.user_agent,
        current=bool(current_id) and session.id == current_id,
    )


def login_pb(signed_in: SignedIn) -> pb.LoginResponse:
    return pb.LoginResponse(
        session_token=signed_in.token,
        # The session just opened is the one its token names: the caller's current one.
        session=session_pb(signed_in.session, signed_in.session.id),
        account=account_pb(signed_in.account),
    )


def consents_pb(consents: list[Consent]) -> pb.Consents:
    return pb.Consents(
        consents=[
            pb.Consent(
                purpose=purpose_value(c.purpose),
                granted=c.granted,
                update_time=to_timestamp(c.update_time),
                history=[
                    pb.ConsentEvent(
                        granted=e.granted, event_time=to_timestamp(e.event_time), source=e.source
                    )
                    for e in c.history
                ],
            )
            for c in consents
        ]
    )


_OUTCOMES = {
    "success": pb.LOGIN_OUTCOME_SUCCESS,
    "bad_password": pb.LOGIN_OUTCOME_BAD_PASSWORD,
    "throttled": pb.LOGIN_OUTCOME_THROTTLED,
    "disabled": pb.LOGIN_OUTCOME_DISABLED,
}


class IdentityApi(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(
        self,
        *,
        accounts: Accounts,
        sessions: Sessions,
        password_change: PasswordChange,
        password_reset: PasswordReset,
        deletion: Deletion,
        billing: Billing,
        consents: Consents,
    ) -> None:
        self.accounts = accounts
        self.sessions = sessions
        self.password_change = password_change
        self.password_reset = password_reset
        self.deletion = deletion
        self.billing = billing
        self.consents = consents

    async def CreateAccount(  # noqa: N802 - gRPC method names
        self, request: pb.CreateAccountRequest, context: Context
    ) -> pb.Account:
        return account_pb(await self.accounts.create_account(request.email, request.password))

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.LoginResponse:  # noqa: N802
        signed_in = await self.sessions.login(
            request.email, request.password, request.ip_address, request.user_agent
        )
        return login_pb(signed_in)

    async def AuthenticateSession(  # noqa: N802
        self, request: pb.AuthenticateSessionRequest, context: Context
    ) -> pb.AuthenticateSessionResponse:
        session = await self.sessions.authenticate(request.session_token)
        return pb.AuthenticateSessionResponse(
            account_id=session.account_id, session=session_pb(session)
        )

    async def EndSession(  # noqa: N802
        self, request: pb.EndSessionRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.sessions.end_session(request.session_token)
        return empty_pb2.Empty()

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.Account:  # noqa: N802
        return account_pb(await self.accounts.account(acting_user(context)))

    async def GetTerms(self, request: pb.GetTermsRequest, context: Context) -> pb.Terms:  # noqa: N802
        plans = sorted(self.billing.plans.items(), key=lambda item: (item[1].amount, item[0]))
        return pb.Terms(
            plans=[
                pb.PlanTerms(name=name, amount=plan.amount, currency=plan.currency)
                for name, plan in plans
            ],
            deletion_grace_days=self.deletion.settings.deletion_grace_days,
            erase_after_days=self.deletion.settings.erase_after_days,
        )

    async def ChangePassword(  # noqa: N802
        self, request: pb.ChangePasswordRequest, context: Context
    ) -> pb.LoginResponse:
        signed_in = await self.password_change.change_password(
            acting_user(context),
            request.current_password,
            request.new_password,
            request.ip_address,
            request.user_agent,
        )
        return login_pb(signed_in)

    async def UpdatePlan(self, request: pb.UpdatePlanRequest, context: Context) -> pb.Account:  # noqa: N802
        address = {k: getattr(request.billing_address, k) for k in ADDRESS_FIELDS}
        change = PlanChange(
            plan=request.plan,
            billing_name=request.billing_name,
            billing_address=address,
            payment_reference=request.payment_reference,
        )
        return account_pb(await self.billing.change_plan(acting_user(context), change))

    async def ListLoginAttempts(  # noqa: N802
        self, request: pb.ListLoginAttemptsRequest, context: Context
    ) -> pb.ListLoginAttemptsResponse:
        attempts, next_token = await self.sessions.login_attempts(
            acting_user(context), request.page_size, request.page_token
        )
        return pb.ListLoginAttemptsResponse(
            attempts=[
                pb.LoginAttempt(
                    attempt_time=to_timestamp(a.attempt_time),
                    ip_address=a.ip_address,
                    user_agent=a.user_agent,
                    outcome=_OUTCOMES.get(a.outcome, pb.LOGIN_OUTCOME_UNSPECIFIED),
                    details_purged=a.purged,
                )
                for a in attempts
            ],
            next_page_token=next_token,
        )

    async def ListSessions(  # noqa: N802
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        sessions = await self.sessions.sessions(acting_user(context))
        return pb.ListSessionsResponse(
            sessions=[session_pb(s, request.current_session_id) for s in sessions]
        )

    async def RevokeOtherSessions(  # noqa: N802
        self, request: pb.RevokeOtherSessionsRequest, context: Context
    ) -> pb.RevokeOtherSessionsResponse:
        count = await self.sessions.revoke_other_sessions(
            acting_user(context), request.current_session_id
        )
        return pb.RevokeOtherSessionsResponse(revoked_count=count)

    async def GetConsents(self, request: pb.GetConsentsRequest, context: Context) -> pb.Consents:  # noqa: N802
        return consents_pb(await self.consents.get(acting_user(context)))

    async def UpdateConsents(  # noqa: N802
        self, request: pb.UpdateConsentsRequest, context: Context
    ) -> pb.Consents:
        changes = [(purpose_name(c.purpose), c.granted) for c in request.changes]
        return consents_pb(await self.consents.update(acting_user(context), changes))

    async def Unsubscribe(  # noqa: N802
        self, request: pb.UnsubscribeRequest, context: Context
    ) -> pb.UnsubscribeResponse:
        purpose = await self.consents.unsubscribe(request.token)
        return pb.UnsubscribeResponse(purpose=purpose_value(purpose))

    async def RequestPasswordReset(  # noqa: N802
        self, request: pb.RequestPasswordResetRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.password_reset.request_password_reset(request.email)
        return empty_pb2.Empty()

    async def ConfirmPasswordReset(  # noqa: N802
        self, request: pb.ConfirmPasswordResetRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.password_reset.confirm_password_reset(request.token, request.new_password)
        return empty_pb2.Empty()

    async def RequestDeletion(  # noqa: N802
        self, request: pb.RequestDeletionRequest, context: Context
    ) -> pb.DeletionRequest:
        requested, deadline = await self.deletion.request_deletion(
            acting_user(context), request.password, request.ip_address
        )
        return pb.DeletionRequest(
            request_time=to_timestamp(requested), erase_deadline=to_timestamp(deadline)
        )

    async def ListDeletionRequests(  # noqa: N802
        self, request: pb.ListDeletionRequestsRequest, context: Context
    ) -> pb.ListDeletionRequestsResponse:
        rows, token = await self.deletion.deletion_requests(request.page_size, request.page_token)
        return pb.ListDeletionRequestsResponse(
            deletions=[
                pb.AccountDeletion(
                    account_id=account_id,
                    request_time=to_timestamp(requested),
                    erase_deadline=to_timestamp(self.deletion.erase_deadline(requested)),
                    grace_end_time=to_timestamp(self.deletion.grace_end(requested)),
                )
                for account_id, requested in rows
            ],
            next_page_token=token,
        )

    async def CancelDeletion(  # noqa: N802
        self, request: pb.CancelDeletionRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.deletion.cancel_deletion(request.token)
        return empty_pb2.Empty()

    async def SendErasureCertificate(  # noqa: N802
        self, request: pb.SendErasureCertificateRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.deletion.send_erasure_certificate(
            request.account_id, request.case_id, request.certificate
        )
        return empty_pb2.Empty()

    async def SendAnnouncement(  # noqa: N802
        self, request: pb.SendAnnouncementRequest, context: Context
    ) -> pb.SendAnnouncementResponse:
        count = await self.consents.announce(
            purpose_name(request.purpose), request.subject, request.body
        )
        return pb.SendAnnouncementResponse(recipient_count=count)

    async def NotifyAccount(  # noqa: N802
        self, request: pb.NotifyAccountRequest, context: Context
    ) -> pb.NotifyAccountResponse:
        sent = await self.consents.notify(request.account_id, request.subject, request.body)
        return pb.NotifyAccountResponse(sent=sent)
