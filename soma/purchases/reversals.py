"""Refunds and disputes: each a record of its own, with ledger entries keyed by it.

A provider reports a refund or a dispute, perhaps many times, late, and in any
order. Each report is folded into the reversal's record (`report`): its status
only moves forward (a refund: pending, succeeded, failed; a dispute: open, then
won or lost), so the order the reports arrive in never changes where it ends.

While a reversal is active (a refund pending or succeeded; a dispute open or
lost) the tokens its money bought are taken back from the student; once it is
resolved for the student (a refund failed, a dispute won) they are returned.
What each reversal should hold back is a function of the set of active
reversals alone (`due`), and every change brings every reversal of the purchase
to what it is due (`_rebalance`): as far as the student's available balance,
read under the wallet's lock, goes; the rest is the reversal's shortfall, and
the account is flagged until no shortfall is left. A balance never goes
negative. The purchase's status is derived from its reversals.
"""

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, select, update

from soma import clock, ledger, money, transitions
from soma.admin import actions
from soma.errors import SomaError
from soma.extensions import db
from soma.ledger.shards import shard_count, shard_for, shard_key
from soma.models import EntryKind, Provider, Purchase, User, Wallet
from soma.models.purchase import (
    CREDITED,
    PurchaseReversal,
    PurchaseStatus,
    ReversalKind,
    ReversalStatus,
)
from soma.notifications.service import notify
from soma.providers import stripe as stripe_provider
from soma.purchases import service

# How far each status is along its reversal's life: a report never moves one back.
RANK = {
    ReversalStatus.PENDING: 0,
    ReversalStatus.SUCCEEDED: 1,
    ReversalStatus.FAILED: 2,
    ReversalStatus.OPEN: 0,
    ReversalStatus.WON: 1,
    ReversalStatus.LOST: 1,
}
KIND_OF = {
    ReversalStatus.PENDING: ReversalKind.REFUND,
    ReversalStatus.SUCCEEDED: ReversalKind.REFUND,
    ReversalStatus.FAILED: ReversalKind.REFUND,
    ReversalStatus.OPEN: ReversalKind.DISPUTE,
    ReversalStatus.WON: ReversalKind.DISPUTE,
    ReversalStatus.LOST: ReversalKind.DISPUTE,
}
FINAL = (ReversalStatus.FAILED, ReversalStatus.WON, ReversalStatus.LOST)


class RefundRefused(SomaError):
    title = "Cannot refund that"


class NotCreditedYet(Exception):
    """A reversal reported for a purchase whose payment is not credited yet."""


def share(tokens: int, part_minor: int, whole_minor: int) -> int:
    """The tokens the first `part_minor` of `whole_minor` bought: ceil(tokens x part / whole)."""
    return -(-tokens * min(part_minor, whole_minor) // whole_minor)


def due(purchase: Purchase, reversals: list[PurchaseReversal]) -> dict[int, tuple[int, int]]:
    """What each reversal should hold back, (purchased tokens, bonus), by reversal id.

    The active reversals, in the order of their providers' ids (never the order
    they arrived in), each hold back the tokens their stretch of the price
    bought: together, the tokens of the money reversed (at most the whole price).
    """
    owed = {reversal.id: (0, 0) for reversal in reversals}
    covered = 0
    for reversal in sorted((r for r in reversals if r.active), key=lambda r: r.provider_ref):
        before, covered = covered, covered + reversal.amount_minor
        owed[reversal.id] = tuple(
            share(part, covered, purchase.amount_minor) - share(part, before, purchase.amount_minor)
            for part in (purchase.tokens, purchase.bonus_tokens)
        )
    return owed


def derived_status(purchase: Purchase, reversals: list[PurchaseReversal]) -> str:
    """A credited purchase's status from its reversals: disputed while a dispute is open or
    lost; refunded once its active refunds cover the price; paid otherwise."""
    if purchase.status not in CREDITED:
        return purchase.status
    reversed_ = totals(reversals)
    if reversed_.disputed_minor:
        return PurchaseStatus.DISPUTED.value
    if reversed_.refunded_minor >= purchase.amount_minor:
        return PurchaseStatus.REFUNDED.value
    return PurchaseStatus.PAID.value


def reversals_of(purchase_id: int) -> list[PurchaseReversal]:
    return list(
        db.session.scalars(
            select(PurchaseReversal)
            .where(PurchaseReversal.purchase_id == purchase_id)
            .order_by(PurchaseReversal.id)
            .execution_options(populate_existing=True)
        )
    )


@dataclass(frozen=True)
class Totals:
    """What a purchase's reversals add up to, for its pages."""

    refunded_minor: int  # refunds pending or succeeded
    disputed_minor: int  # disputes open or lost
    taken: int
    shortfall: int

    @property
    def reversed_minor(self) -> int:
        return self.refunded_minor + self.disputed_minor


def totals(reversals: list[PurchaseReversal]) -> Totals:
    active = [r for r in reversals if r.active]
    return Totals(
        refunded_minor=sum(r.amount_minor for r in active if r.kind == ReversalKind.REFUND),
        disputed_minor=sum(r.amount_minor for r in active if r.kind == ReversalKind.DISPUTE),
        taken=sum(r.taken for r in reversals),
        shortfall=sum(r.shortfall for r in reversals),
    )


def totals_of(purchase_ids: list[int]) -> dict[int, Totals]:
    """Each purchase's reversal totals, for a list of purchases: one query for the lot."""
    found: dict[int, list[PurchaseReversal]] = {purchase_id: [] for purchase_id in purchase_ids}
    if purchase_ids:
        for reversal in db.session.scalars(
            select(PurchaseReversal)
            .where(PurchaseReversal.purchase_id.in_(purchase_ids))
            .order_by(PurchaseReversal.id)
        ):
            found[reversal.purchase_id].append(reversal)
    return {purchase_id: totals(found_) for purchase_id, found_ in found.items()}


@dataclass(frozen=True)
class Standing:
    """Where a purchase stands, for the student: a key for its style, and its words."""

    key: str  # pending, paid, failed, expired, partly-refunded, refunded, disputed
    label: str


def standing(purchase: Purchase, reversed_: Totals) -> Standing:
    """The purchase's status as the student reads it: a paid purchase with some of its price
    refunded is "Partly refunded"; refunded and disputed are as their status says."""
    if purchase.status == PurchaseStatus.PAID and reversed_.refunded_minor:
        return Standing("partly-refunded", "Partly refunded")
    return Standing(purchase.status, purchase.status_label)


def report(
    purchase_id: int,
    provider_ref: str,
    status: ReversalStatus,
    amount_minor: int,
    source: str,
    made_at: datetime | None = None,
    on_report=None,
) -> PurchaseReversal:
    """Fold one provider report of a refund or dispute into its record, and bring the
    tokens held back to what every active reversal is due. Safe to repeat, in any order.

    NotCreditedYet if the purchase's payment is not credited yet (the provider is
    asked to report it again later). `made_at` is when the provider made it, if it
    says: a refund made before refunds were records of their own is folded into
    the purchase's legacy refund row (see migration 0008), not counted again.
    `on_report(purchase, reversal)`, if given, runs in the same transaction whatever this
    call found: a new reversal, or one a webhook reported first (an admin's refund records
    itself there, once).
    """
    status = ReversalStatus(status)
    if not 0 < amount_minor < 2**62:
        raise ValueError(f"a reversal's amount is positive, not {amount_minor}")

    def work() -> PurchaseReversal:
        purchase = service.locked(purchase_id)
        if purchase.status not in CREDITED:
            raise NotCreditedYet(f"purchase {purchase_id} is {purchase.status}")
        reversal = db.session.scalars(
            select(PurchaseReversal)
            .where(PurchaseReversal.provider_ref == provider_ref)
            .execution_options(populate_existing=True)
        ).first()
        now = clock.now()
        if reversal is None and made_at is not None and KIND_OF[status] == ReversalKind.REFUND:
            reversal = _fold_into_legacy(purchase_id, provider_ref, amount_minor, made_at)
        if reversal is None and KIND_OF[status] == ReversalKind.DISPUTE:
            reversal = _adopt_legacy_dispute(purchase_id, provider_ref)
        if reversal is None:
            reversal = PurchaseReversal(
                purchase_id=purchase_id,
                kind=KIND_OF[status].value,
                provider_ref=provider_ref,
                amount_minor=amount_minor,
                status=status.value,
                tokens_taken=0,
                bonus_taken=0,
                tokens_short=0,
                bonus_short=0,
                moves=0,
                created_at=now,
                resolved_at=now if status in FINAL else None,
            )
            db.session.add(reversal)
            db.session.flush()
        else:
            if reversal.purchase_id != purchase_id or reversal.kind != KIND_OF[status]:
                raise RefundRefused(f"{provider_ref} belongs to another purchase or kind")
            if RANK[status] <= RANK[ReversalStatus(reversal.status)]:
                if on_report is not None:
                    on_report(purchase, reversal)
                return reversal  # a repeat, or news older than what we know
            reversal.status = status.value
            reversal.resolved_at = now if status in FINAL else None
        _rebalance(purchase, source)
        if on_report is not None:
            on_report(purchase, reversal)
        return reversal

    return transitions.retrying(work, "This purchase", also=(ledger.InsufficientTokens,))


def _fold_into_legacy(
    purchase_id: int, provider_ref: str, amount_minor: int, made_at: datetime
) -> PurchaseReversal | None:
    """A refund the purchase's legacy row already counts: the row takes its id when the
    amounts agree, or gives up that much of its amount for a row of its own."""
    legacy = db.session.scalars(
        select(PurchaseReversal).where(
            PurchaseReversal.provider_ref == f"legacy:refund:{purchase_id}",
            PurchaseReversal.created_at > made_at,
        )
    ).first()
    if legacy is None or legacy.amount_minor < amount_minor:
        return None
    if legacy.amount_minor == amount_minor:
        legacy.provider_ref = provider_ref
        return legacy
    legacy.amount_minor -= amount_minor
    return None


def _adopt_legacy_dispute(purchase_id: int, provider_ref: str) -> PurchaseReversal | None:
    """A dispute open before disputes were records of their own whose Stripe id was not
    known (it took no tokens): its row takes the id Stripe now reports (migration 0008)."""
    legacy = db.session.scalars(
        select(PurchaseReversal).where(
            PurchaseReversal.provider_ref == f"legacy:dispute:{purchase_id}"
        )
    ).first()
    if legacy is not None:
        legacy.provider_ref = provider_ref
    return legacy


def _rebalance(purchase: Purchase, source: str) -> None:
    """Bring every reversal of `purchase` to what it is due, in the current transaction;
    then derive the purchase's status and the account's flag."""
    reversals = reversals_of(purchase.id)
    owed = due(purchase, reversals)
    _lock_in_credit_order(purchase, reversals)
    # The balance is read under the wallet's lock: nothing spends or credits it
    # until this transaction ends, so a shortfall recorded here is real.
    parts = ("tokens", "bonus")
    # First every reversal that holds more than it is due gives back (or forgives
    # a shortfall it never took); only then do the others take, from the balance
    # those returns refilled: what one reversal returns another may be due.
    returned_now = 0
    for reversal in reversals:
        gives = [0, 0]
        for index, part in enumerate(parts):
            taken = getattr(reversal, f"{part}_taken")
            short = getattr(reversal, f"{part}_short")
            excess = taken + short - owed[reversal.id][index]
            if excess > 0:
                forgiven = min(excess, short)  # never taken: nothing to give back
                gives[index] = excess - forgiven
                setattr(reversal, f"{part}_taken", taken - gives[index])
                setattr(reversal, f"{part}_short", short - forgiven)
        if any(gives):
            _post(purchase, reversal, (0, 0), tuple(gives))
            returned_now += sum(gives)
    # The balance is read under the wallet's lock: nothing spends or credits it
    # until this transaction ends, so a shortfall recorded here is real.
    available = db.session.scalar(
        select(Wallet.available).where(Wallet.user_id == purchase.user_id).with_for_update()
    )
    taken_now = short_now = 0
    for reversal in reversals:
        takes = [0, 0]
        for index, part in enumerate(parts):
            taken = getattr(reversal, f"{part}_taken")
            short = getattr(reversal, f"{part}_short")
            need = owed[reversal.id][index] - taken - short
            if need > 0:
                takes[index] = min(need, available)
                available -= takes[index]
                short_now += need - takes[index]
                setattr(reversal, f"{part}_taken", taken + takes[index])
                setattr(reversal, f"{part}_short", short + need - takes[index])
        if any(takes):
            _post(purchase, reversal, tuple(takes), (0, 0))
            taken_now += sum(takes)
    db.session.flush()
    status = derived_status(purchase, reversals)
    left = totals(reversals)
    note = (
        f"refunds {money.amount(left.refunded_minor, purchase.currency)}, disputes "
        f"{money.amount(left.disputed_minor, purchase.currency)}; {taken_now} tokens taken "
        f"back, {returned_now} returned, {left.shortfall} short"
    )
    service.move(purchase, PurchaseStatus(status), source, note)
    _flag(purchase, short_now)
    _tell(purchase, taken_now, returned_now, short_now)


def _lock_in_credit_order(purchase: Purchase, reversals: list[PurchaseReversal]) -> None:
    """Lock the student's wallet, then every platform shard the rebalance may post to:
    the issuance shards, then the promotions shards, each in shard order. A purchase's
    credit takes them in that order (its user, issuance, then promotions), and the
    rebalance's entries may not (one giving back a bonus before another takes tokens):
    locked first, the two never wait for each other in a cycle (a deadlock)."""
    db.session.execute(
        select(Wallet.id).where(Wallet.user_id == purchase.user_id).with_for_update()
    )
    count = shard_count()
    shards = sorted({shard_for(shard_key("", ("reversal", r.id)), count) for r in reversals})
    for _, account in service.PARTS:
        db.session.execute(
            select(Wallet.id)
            .where(Wallet.code == account.value, Wallet.shard.in_(shards))
            .order_by(Wallet.shard)
            .with_for_update()
        )


def _post(purchase: Purchase, reversal: PurchaseReversal, takes, gives) -> None:
    """The reversal's ledger entries for one change, keyed by the reversal and its count."""
    reversal.moves += 1
    what = "Refund" if reversal.kind == ReversalKind.REFUND else "Dispute"
    for (part, account), take, give in zip(service.PARTS, takes, gives, strict=True):
        key = f"reversal:{reversal.id}:{reversal.moves}:{part}"
        details = {"reference": ("reversal", reversal.id)}
        if take:
            ledger.debit(
                purchase.user_id,
                take,
                key=key,
                kind=EntryKind.REFUND,
                to=account,
                memo=f"{what} of purchase #{purchase.id}: tokens taken back",
                **details,
            )
        if give:
            ledger.credit(
                purchase.user_id,
                give,
                key=key,
                kind=EntryKind.ADJUSTMENT,
                source=account,
                memo=f"{what} of purchase #{purchase.id} reversed: tokens returned",
                **details,
            )


def _flag(purchase: Purchase, short_now: int) -> None:
    """Flag the account for a new shortfall; clear the flag once none is left anywhere."""
    if short_now:
        db.session.execute(
            update(User)
            .where(User.id == purchase.user_id)
            .values(
                flagged_at=clock.now(),
                flag_reason=f"Purchase #{purchase.id}: {short_now} tokens reversed were "
                "already spent",
            )
            .execution_options(synchronize_session=False)
        )
        return
    outstanding = exists().where(
        PurchaseReversal.purchase_id == Purchase.id,
        Purchase.user_id == purchase.user_id,
        (PurchaseReversal.tokens_short > 0) | (PurchaseReversal.bonus_short > 0),
    )
    db.session.execute(
        update(User)
        .where(User.id == purchase.user_id, User.flagged_at.is_not(None), ~outstanding)
        .values(flagged_at=None, flag_reason=None)
        .execution_options(synchronize_session=False)
    )


def _tell(purchase: Purchase, taken: int, returned: int, short: int) -> None:
    link = f"/buy/purchases/{purchase.id}"
    if taken or short:
        text = f"Purchase #{purchase.id} was refunded or disputed: {money.tokens(taken)} "
        text += "taken back from your wallet"
        if short:
            text += f" ({money.tokens(short)} had already been spent)"
        notify(purchase.user_id, "purchase_refunded", text + ".", link=link)
    if returned:
        notify(
            purchase.user_id,
            "purchase_reversal_undone",
            f"{money.tokens(returned)} taken back for purchase #{purchase.id} "
            f"{'was' if returned == 1 else 'were'} returned to your wallet.",
            link=link,
        )


# An admin's refund -----------------------------------------------------------------------


def refundable(purchase: Purchase, reversals: list[PurchaseReversal]) -> int:
    """What is left of the price to refund: not refunded, not disputed."""
    if purchase.status not in CREDITED:
        return 0
    return max(0, purchase.amount_minor - totals(reversals).reversed_minor)


def refund_by_admin(purchase_id: int, amount_minor: int, admin: User, key: str) -> PurchaseReversal:
    """Refund `amount_minor` of a purchase: the money goes back first, then the tokens.

    `key` is the refund form's one-time key: the form sent twice refunds once.
    Refused, taking nothing, when there is no way to send the money back. The action
    record is written with the refund's own database write (after Stripe made it), once.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{8,64}", key or ""):
        raise RefundRefused("This form has expired. Reload the page.")
    purchase = service.fresh(purchase_id)
    if purchase.provider == Provider.MPESA:
        raise RefundRefused(
            "M-Pesa payments cannot be refunded from Soma yet: Soma cannot send shillings "
            "back. Nothing was changed; refund the student through M-Pesa, then record it."
        )
    left = refundable(purchase, reversals_of(purchase_id))
    status_before = purchase.status
    if not 0 < amount_minor <= left:
        raise RefundRefused(
            f"At most {money.amount(left, purchase.currency)} of this purchase can be refunded."
        )
    if purchase.provider == Provider.STRIPE:
        if not purchase.payment_intent_id:
            raise RefundRefused(
                "Stripe has no payment on record for this purchase, so no money can go back. "
                "Nothing was changed."
            )
        # Keyed by the form: a double submit is one refund at Stripe. Two admins'
        # refunds are two, and Stripe refuses one that passes what is left to refund.
        refund = (
            stripe_provider.client()
            .v1.refunds.create(
                params={
                    "payment_intent": purchase.payment_intent_id,
                    "amount": amount_minor,
                    "metadata": {"purchase_id": str(purchase_id)},
                },
                options={"idempotency_key": f"soma-refund-{purchase_id}-{key}"},
            )
            .to_dict()
        )
        ref, status = refund["id"], stripe_refund_status(refund.get("status"))
        amount_minor = int(refund.get("amount") or amount_minor)
    else:
        ref, status = f"sandbox:refund:{purchase_id}:{key}", ReversalStatus.SUCCEEDED

    def record(locked: Purchase, made: PurchaseReversal) -> None:
        # Once per refund: Stripe's refund.created webhook may have made the reversal
        # before this call, and the form sent again finds it again.
        if actions.recorded("refund", "purchase", purchase_id, {"refund_ref": ref}):
            return
        actions.record(
            admin,
            "refund",
            "purchase",
            purchase_id,
            {"refundable_minor": left, "status": status_before},
            {
                "refundable_minor": left - made.amount_minor,
                "status": locked.status,
                "refund_minor": made.amount_minor,
                "refund_ref": ref,
                "refund_status": made.status,
                "currency": purchase.currency,
            },
        )

    reversal = report(purchase_id, ref, status, amount_minor, f"admin:{admin.id}", on_report=record)
    if reversal.amount_minor != amount_minor:
        raise RefundRefused("This form was already used for another refund. Reload the page.")
    return reversal


def stripe_refund_status(status: str | None) -> ReversalStatus:
    """Stripe's refund status as ours: failed and canceled refunds returned no money."""
    if status == "succeeded":
        return ReversalStatus.SUCCEEDED
    if status in ("failed", "canceled"):
        return ReversalStatus.FAILED
    return ReversalStatus.PENDING  # pending, requires_action


def stripe_dispute_status(status: str | None) -> ReversalStatus:
    """Stripe's dispute status as ours (warning_closed: an inquiry that never became one)."""
    if status in ("won", "warning_closed"):
        return ReversalStatus.WON
    if status == "lost":
        return ReversalStatus.LOST
    return ReversalStatus.OPEN
