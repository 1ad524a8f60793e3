"""All models, imported here so that Alembic and the app see every table."""

from soma.models.audit import AuditCheckpoint, AuditCheckpointWallet
from soma.models.base import Base, UTCDateTime, utcnow
from soma.models.classes import ClassEvent, ClassSession, ClassStatus
from soma.models.earnings import EarningsCheckpoint, EarningsDay, EarningsMonth
from soma.models.gift import Gift
from soma.models.ledger import (
    ENTRY_KIND_LABELS,
    SOURCE_ACCOUNTS,
    Bucket,
    EntryKind,
    JournalEntry,
    PlatformAccount,
    Posting,
    Wallet,
)
from soma.models.metrics import (
    MetricsActiveDay,
    MetricsCheckpoint,
    MetricsDay,
    MetricsWallet,
)
from soma.models.notification import Notification
from soma.models.operator import AdminAction, Alert, AuditRun, AuditRunStatus, Heartbeat
from soma.models.outbox import OutboxMessage
from soma.models.payout import (
    MethodKind,
    PayoutMethod,
    Withdrawal,
    WithdrawalEvent,
    WithdrawalStatus,
)
from soma.models.pricing import PricingUserType, TokenPricing
from soma.models.provider import EventStatus, ProviderEvent, UnmatchedPayment
from soma.models.purchase import (
    Provider,
    Purchase,
    PurchaseEvent,
    PurchaseReversal,
    PurchaseStatus,
    ReversalKind,
    ReversalStatus,
    TokenPackage,
)
from soma.models.user import SIGNUP_ROLES, Role, User

__all__ = [
    "ENTRY_KIND_LABELS",
    "SIGNUP_ROLES",
    "SOURCE_ACCOUNTS",
    "AdminAction",
    "Alert",
    "AuditCheckpoint",
    "AuditCheckpointWallet",
    "AuditRun",
    "AuditRunStatus",
    "Base",
    "Bucket",
    "ClassEvent",
    "ClassSession",
    "ClassStatus",
    "EarningsCheckpoint",
    "EarningsDay",
    "EarningsMonth",
    "EntryKind",
    "EventStatus",
    "Gift",
    "Heartbeat",
    "JournalEntry",
    "MethodKind",
    "MetricsActiveDay",
    "MetricsCheckpoint",
    "MetricsDay",
    "MetricsWallet",
    "Notification",
    "OutboxMessage",
    "PayoutMethod",
    "PlatformAccount",
    "Posting",
    "PricingUserType",
    "Provider",
    "ProviderEvent",
    "Purchase",
    "PurchaseEvent",
    "PurchaseReversal",
    "PurchaseStatus",
    "ReversalKind",
    "ReversalStatus",
    "Role",
    "TokenPackage",
    "TokenPricing",
    "UTCDateTime",
    "UnmatchedPayment",
    "User",
    "Wallet",
    "Withdrawal",
    "WithdrawalEvent",
    "WithdrawalStatus",
    "utcnow",
]
