"""Money out: teachers' payout methods, their withdrawals, and each withdrawal's history.

A withdrawal is what the teacher asked for and where it stands on its rail. The
ledger's WITHDRAWAL_HOLD entry (keyed by the withdrawal) locks its tokens when it
is requested; WITHDRAWAL_PAID retires them (to redemption, the fee to fees) or
WITHDRAWAL_RELEASE gives them back, once, whoever reports the outcome.
"""

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from soma.models.base import Base, BigId, UTCDateTime, one_of, utcnow


class MethodKind(enum.StrEnum):
    SANDBOX = "sandbox"
    MPESA = "mpesa"
    BANK = "bank"
    STRIPE = "stripe"


METHOD_LABELS = {
    MethodKind.SANDBOX: "Test payout (sandbox)",
    MethodKind.MPESA: "M-Pesa",
    MethodKind.BANK: "Bank transfer",
    MethodKind.STRIPE: "Stripe",
}


class WithdrawalStatus(enum.StrEnum):
    REQUESTED = "requested"
    PROCESSING = "processing"
    PAID = "paid"
    FAILED = "failed"
    REJECTED = "rejected"


WITHDRAWAL_STATUS_LABELS = {
    WithdrawalStatus.REQUESTED: "Requested",
    WithdrawalStatus.PROCESSING: "Processing",
    WithdrawalStatus.PAID: "Paid",
    WithdrawalStatus.FAILED: "Failed",
    WithdrawalStatus.REJECTED: "Rejected",
}

# A withdrawal in one of these still holds its tokens; the others have closed the hold.
OPEN_STATUSES = (WithdrawalStatus.REQUESTED.value, WithdrawalStatus.PROCESSING.value)
RELEASED_STATUSES = (WithdrawalStatus.FAILED.value, WithdrawalStatus.REJECTED.value)

# The current default method of a teacher: at most one (a partial unique index).
_CURRENT_DEFAULT = text("is_default AND removed_at IS NULL")
# A teacher has at most one current Stripe method (one connected account to onboard)
# and one sandbox method, and a number once among their M-Pesa methods: two clicks at
# once on "Connect with Stripe" make one method and one account (migration 0017).
_CURRENT_STRIPE = text("kind = 'stripe' AND removed_at IS NULL")
_CURRENT_SANDBOX = text("kind = 'sandbox' AND removed_at IS NULL")
_CURRENT_MPESA = text("kind = 'mpesa' AND removed_at IS NULL")


class PayoutMethod(Base):
    """Where a teacher's withdrawals are sent. A removed method is kept (withdrawals name it).

    Each kind fills its own columns: M-Pesa its phone (2547XXXXXXXX); a bank its
    holder, bank and account number, the number encrypted (soma.payouts.sealing)
    with only its last four digits in clear; Stripe its connected account and the
    readiness the Connect webhook reports.
    """

    __tablename__ = "payout_methods"
    __table_args__ = (
        CheckConstraint(one_of("kind", MethodKind), name="kind_known"),
        Index("ix_payout_methods_user_id_id", "user_id", "id"),
        Index(
            "uq_payout_methods_one_default",
            "user_id",
            unique=True,
            postgresql_where=_CURRENT_DEFAULT,
            sqlite_where=_CURRENT_DEFAULT,
        ),
        Index(
            "uq_payout_methods_one_stripe",
            "user_id",
            unique=True,
            postgresql_where=_CURRENT_STRIPE,
            sqlite_where=_CURRENT_STRIPE,
        ),
        Index(
            "uq_payout_methods_one_sandbox",
            "user_id",
            unique=True,
            postgresql_where=_CURRENT_SANDBOX,
            sqlite_where=_CURRENT_SANDBOX,
        ),
        Index(
            "uq_payout_methods_mpesa_phone",
            "user_id",
            "phone",
            unique=True,
            postgresql_where=_CURRENT_MPESA,
            sqlite_where=_CURRENT_MPESA,
        ),
        UniqueConstraint("stripe_account_id", name="uq_payout_methods_stripe_account_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # M-Pesa
    phone: Mapped[str | None] = mapped_column(String(12))
    # Bank transfer
    account_holder: Mapped[str | None] = mapped_column(String(120))
    bank_name: Mapped[str | None] = mapped_column(String(120))
    account_number_sealed: Mapped[str | None] = mapped_column(String(512))
    account_last4: Mapped[str | None] = mapped_column(String(4))
    # Stripe Connect, filled by `account.updated` on the Connect webhook
    stripe_account_id: Mapped[str | None] = mapped_column(String(255))
    transfers_active: Mapped[bool] = mapped_column(Boolean, default=False)
    payouts_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    requirements: Mapped[str] = mapped_column(String(1000), default="")
    # The `created` time of the account.updated event stored: an older one is stale.
    stripe_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The connected account's last failed payout to its bank (payout.failed), as shown.
    payout_failure: Mapped[str | None] = mapped_column(String(300))

    @property
    def kind_label(self) -> str:
        return METHOD_LABELS[MethodKind(self.kind)]

    @property
    def masked(self) -> str:
        """What identifies the method on a page, never the whole account number."""
        if self.kind == MethodKind.BANK:
            return f"{self.bank_name} · {self.account_holder} · ••••{self.account_last4}"
        if self.kind == MethodKind.MPESA:
            return f"+{self.phone[:3]} ••• ••{self.phone[-4:]}" if self.phone else "M-Pesa"
        if self.kind == MethodKind.STRIPE:
            return f"Stripe account {self.stripe_account_id or '(not connected)'}"
        return "Test payouts: no money moves"

    @property
    def describe(self) -> str:
        return f"{self.kind_label}: {self.masked}"


class Withdrawal(Base):
    """A teacher's request for US dollars, and where it stands.

    The amounts are fixed when it is requested: `usd_cents` asked for, `tokens`
    held for it (worth at least that at the teacher rate), `fee_cents` taken from
    the payout, `net_cents` sent. `fee_tokens` are the tokens that go to the fees
    account when it is paid (the rest go to redemption).
    """

    __tablename__ = "withdrawals"
    __table_args__ = (
        CheckConstraint(one_of("status", WithdrawalStatus), name="status_known"),
        CheckConstraint("usd_cents > 0 AND tokens > 0", name="amount_positive"),
        CheckConstraint(
            "fee_cents >= 0 AND net_cents > 0 AND net_cents + fee_cents = usd_cents",
            name="fee_from_payout",
        ),
        CheckConstraint("fee_tokens >= 0 AND fee_tokens < tokens", name="fee_tokens_within"),
        Index("ix_withdrawals_user_id_id", "user_id", "id"),
        Index("ix_withdrawals_status_id", "status", "id"),
        UniqueConstraint("provider_request_id", name="uq_withdrawals_provider_request_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The confirmation form's nonce: a double submit finds the first withdrawal.
    key: Mapped[str] = mapped_column(String(200), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    method_id: Mapped[int] = mapped_column(ForeignKey("payout_methods.id"))
    usd_cents: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
    fee_cents: Mapped[int] = mapped_column(BigInteger)
    net_cents: Mapped[int] = mapped_column(BigInteger)
    fee_tokens: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=WithdrawalStatus.REQUESTED.value)
    version: Mapped[int] = mapped_column(Integer, default=0)
    # Why it waits for an admin whatever its rail ("" when it need not).
    review_reason: Mapped[str] = mapped_column(String(255), default="")
    hold_entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))
    # The WITHDRAWAL_PAID or WITHDRAWAL_RELEASE entry that closed the hold.
    closed_entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))
    # The provider's id of the request (a transfer, a B2C conversation), set when sent.
    provider_request_id: Mapped[str | None] = mapped_column(String(255))
    # What proves the payment: the bank's reference, an M-Pesa receipt, a transfer id.
    provider_reference: Mapped[str | None] = mapped_column(String(255))
    failure_reason: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When it went to processing: the audit flags one processing for too long.
    processing_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When a rail first sent it to its provider: one send per withdrawal.
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When the sweeper last asked the provider about it.
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The attempt a provider request is keyed by (1: the withdrawal's own key); raised,
    # and committed, before a new attempt, only after an answer that nothing was made.
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    # What the rail last heard when it sent (soma.payouts.sending): None once known.
    send_state: Mapped[str | None] = mapped_column(String(16))
    # The whole shillings an M-Pesa withdrawal sends (its net, rounded down), fixed at request.
    amount_kes: Mapped[int | None] = mapped_column(BigInteger)
    # When a paid withdrawal's transfer was reversed and its tokens given back.
    reversed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user = relationship("User")
    method = relationship("PayoutMethod")

    @property
    def needs_review(self) -> bool:
        return bool(self.review_reason)

    @property
    def status_label(self) -> str:
        if self.reversed_at is not None:
            return "Paid, then reversed"
        return WITHDRAWAL_STATUS_LABELS[WithdrawalStatus(self.status)]

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class WithdrawalEvent(Base):
    """A change of a withdrawal's status: from what, to what, who, why, and when."""

    __tablename__ = "withdrawal_events"
    __table_args__ = (Index("ix_withdrawal_events_withdrawal_id_id", "withdrawal_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    withdrawal_id: Mapped[int] = mapped_column(ForeignKey("withdrawals.id"))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    # The admin who did it; none for the teacher, the sweeper or a provider.
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    source: Mapped[str] = mapped_column(String(64))  # "teacher", "admin:3", "sweeper", "sandbox"
    note: Mapped[str] = mapped_column(String(255), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    actor = relationship("User")

    @property
    def to_label(self) -> str:
        return WITHDRAWAL_STATUS_LABELS[WithdrawalStatus(self.to_status)]
