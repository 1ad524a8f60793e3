"""Purchases: what a student asks to buy, and fulfilment exactly once.

Every provider ends in the same three functions: `fulfil` (paid: credit the
tokens), `fail` and `expire`. Each is a compare-and-set on the purchase's
status in one transaction with its ledger entries, so a webhook, a success
page and a retry racing for one purchase credit it once: one of them moves
the status, the rest find it moved. The ledger entries are keyed by the
purchase too (`purchase:<id>:tokens`, `purchase:<id>:bonus`).

On PostgreSQL a credit is one statement in autocommit (`core.post_row_credits`), and
nothing is read before it: it moves the purchase to paid if it is payable (a
compare-and-set that also names its `credited_entry_id`, taken from the entries'
sequence), writes its status history row, the notification and its email, the tokens'
entry with that id and the bonus's entry if it has one, all from the purchase's row and
its student's as the statement finds them (the entries' amounts, memos and digests too:
the words are written in SQL, the same as Python's), and returns the purchase's row.
Either all of it is written or none, the issuance and promotions rows are locked only
while the database runs it, never while this process does anything, and no crash leaves
a credit without its history, notification or email. On SQLite, and when a `claim` must
commit with the credit, all of it is one transaction in the session.
"""

import math
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache

from flask import current_app
from sqlalchemy import (
    BigInteger,
    String,
    bindparam,
    case,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import configure_mappers, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state, manager_of_class, set_committed_value
from sqlalchemy.orm.util import identity_key

from soma import clock, ledger, mail, money, transitions
from soma.auth.freeze import refuse_if_frozen
from soma.errors import FieldRefusal, KeyReused
from soma.extensions import db
from soma.ledger import core
from soma.ledger.pricing import get_token_pricing, tokens_to_cents
from soma.models import (
    EntryKind,
    Notification,
    OutboxMessage,
    PlatformAccount,
    PricingUserType,
    Role,
    User,
    UTCDateTime,
    utcnow,
)
from soma.models.purchase import (
    CUSTOM_MAX,
    CUSTOM_MIN,
    PROVIDER_LABELS,
    Provider,
    Purchase,
    PurchaseEvent,
    PurchaseStatus,
    TokenPackage,
)
from soma.notifications.service import email_text, notify
from soma.providers import daraja, sandbox
from soma.providers import stripe as stripe_provider
from soma.security import owned

# A payment the provider confirms is credited even after we gave up waiting:
# the student's money was taken.
PAYABLE = (PurchaseStatus.PENDING.value, PurchaseStatus.FAILED.value, PurchaseStatus.EXPIRED.value)
PENDING = (PurchaseStatus.PENDING.value,)


class PurchaseRefused(FieldRefusal):
    """A purchase that cannot be made as asked."""

    title = "Cannot buy that"


@dataclass(frozen=True)
class Quote:
    """What a choice costs: tokens, bonus, and the price in US cents (and KES, if set)."""

    tokens: int
    bonus_tokens: int
    usd_cents: int
    kes: int | None
    package_id: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.tokens + self.bonus_tokens


def kes_per_usd() -> Decimal | None:
    rate = current_app.config.get("MPESA_KES_PER_USD")
    return Decimal(rate) if rate else None


def _kes(usd_cents: int) -> int | None:
    """Whole shillings for `usd_cents` at the configured rate, rounded up."""
    rate = kes_per_usd()
    if rate is None:
        return None
    return math.ceil(Decimal(usd_cents) * rate / 100)


def mpesa_offered() -> bool:
    return daraja.configured() and kes_per_usd() is not None


def providers() -> list[Provider]:
    """The providers a student may choose now, in the order offered.

    Stripe when its keys are set. The sandbox when no provider is configured,
    never in production. M-Pesa when Daraja's keys and the shilling rate are set.
    """
    offered = [Provider.STRIPE] if stripe_provider.configured() else []
    if mpesa_offered():
        offered.append(Provider.MPESA)
    if not offered and sandbox.allowed():
        offered.append(Provider.SANDBOX)
    return offered


def packages() -> list[TokenPackage]:
    return list(
        db.session.scalars(
            select(TokenPackage)
            .where(TokenPackage.active)
            .order_by(TokenPackage.sort_order, TokenPackage.tokens)
        )
    )


def package_quotes() -> list[Quote]:
    return [
        Quote(p.tokens, p.bonus_tokens, p.price_cents, _kes(p.price_cents), p.id)
        for p in packages()
    ]


def quote(package_id: int | None = None, custom_tokens: int | None = None) -> Quote:
    """The price of a package, or of a custom number of tokens at the student rate."""
    if package_id is not None:
        package = db.session.get(TokenPackage, package_id)
        if package is None or not package.active:
            raise PurchaseRefused("That package is not on sale. Choose another.", "package")
        return Quote(
            package.tokens,
            package.bonus_tokens,
            package.price_cents,
            _kes(package.price_cents),
            package.id,
        )
    if custom_tokens is None:
        raise PurchaseRefused("Choose a package or enter a number of tokens.", "package")
    if not CUSTOM_MIN <= custom_tokens <= CUSTOM_MAX:
        raise PurchaseRefused(
            f"Buy between {CUSTOM_MIN:,} and {CUSTOM_MAX:,} tokens at a time.", "custom_tokens"
        )
    pricing = get_token_pricing(PricingUserType.STUDENT, clock.now())
    cents = tokens_to_cents(custom_tokens, pricing, "up")
    return Quote(custom_tokens, 0, cents, _kes(cents))


def start(user: User, chosen: Quote, provider: Provider, key: str, phone: str | None = None):
    """Record a pending purchase; a repeated `key` returns the first one.

    AccountFrozen for a frozen account, checked (share-locked) in the purchase's own
    transaction. Only the start is refused: a purchase started before a freeze is still
    credited when its payment comes in (`fulfil` never checks), since the money was paid.
    """
    refuse_if_frozen(user.id, "buy tokens", lock=True)
    existing = db.session.scalars(select(Purchase).where(Purchase.idempotency_key == key)).first()
    if existing is not None:
        if existing.user_id != user.id:
            raise PurchaseRefused("This form was already used. Reload the page.")
        if _asked(existing) != _asking(chosen, provider, phone):
            raise KeyReused(
                "This form was already used for a different purchase "
                f"(#{existing.id}). Reload the buy page to start a new one."
            )
        return existing
    if user.role != Role.STUDENT:
        raise PurchaseRefused("Only students buy tokens.")
    if provider not in providers():
        raise PurchaseRefused("Choose one of the payment methods offered.", "provider")
    kes = provider == Provider.MPESA
    if kes and chosen.kes is None:
        raise PurchaseRefused("M-Pesa payments are not available right now.", "provider")
    now = clock.now()
    purchase = Purchase(
        idempotency_key=key,
        user_id=user.id,
        package_id=chosen.package_id,
        tokens=chosen.tokens,
        bonus_tokens=chosen.bonus_tokens,
        amount_minor=chosen.kes if kes else chosen.usd_cents,
        currency="KES" if kes else "USD",
        provider=provider.value,
        phone=phone,
        created_at=now,
        updated_at=now,
    )
    db.session.add(purchase)
    try:
        db.session.flush()
        db.session.add(
            PurchaseEvent(
                purchase_id=purchase.id,
                from_status=None,
                to_status=PurchaseStatus.PENDING.value,
                source="student",
                at=now,
            )
        )
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return start(user, chosen, provider, key, phone)
    return purchase


def _asked(purchase: Purchase) -> tuple:
    """What a purchase was asked for, to compare with a repeat of its key."""
    kes = purchase.currency == "KES"
    return (purchase.package_id, purchase.tokens, purchase.bonus_tokens, purchase.provider,
            purchase.phone if kes else None)  # fmt: skip


def _asking(chosen: Quote, provider: Provider, phone: str | None) -> tuple:
    kes = provider == Provider.MPESA
    return (chosen.package_id, chosen.tokens, chosen.bonus_tokens, provider.value,
            phone if kes else None)  # fmt: skip


def purchase_for(user: User, purchase_id: int) -> Purchase | None:
    """The purchase if it is `user`'s (or `user` is an admin); None otherwise (404)."""
    return owned(Purchase, user, purchase_id)


def history(user: User, limit: int = 50) -> list[Purchase]:
    return list(
        db.session.scalars(
            select(Purchase)
            .where(Purchase.user_id == user.id)
            .order_by(Purchase.id.desc())
            .limit(limit)
        )
    )


def paid_at(purchase_id: int) -> datetime | None:
    """When the purchase was paid: its move to paid, as its status history records it."""
    return db.session.scalar(
        select(func.min(PurchaseEvent.at)).where(
            PurchaseEvent.purchase_id == purchase_id,
            PurchaseEvent.to_status == PurchaseStatus.PAID.value,
        )
    )


def move(purchase: Purchase, to: PurchaseStatus, source: str, note: str = "", **values) -> None:
    """Move `purchase` (as read, locked) to `to` with its history row, in the current
    transaction; transitions.Stale if it changed meanwhile."""
    now = clock.now()
    transitions.change(
        purchase,
        {"status": to.value, "updated_at": now, **values},
        PurchaseEvent(
            purchase_id=purchase.id,
            from_status=purchase.status,
            to_status=to.value,
            source=source[:64],
            note=note[:255],
            at=now,
        ),
    )


def locked(purchase_id: int) -> Purchase:
    return transitions.locked(Purchase, purchase_id)


def _move_from(
    purchase_id: int, allowed: tuple[str, ...], to: PurchaseStatus, source: str, note="", **values
) -> Purchase | None:
    """Move the purchase from one of `allowed` to `to`; None if it is elsewhere (another call
    moved it first, or it is past that point)."""
    purchase = locked(purchase_id)
    if purchase.status not in allowed:
        return None
    move(purchase, to, source, note, **values)
    return purchase


# A purchase's tokens come from issuance and its bonus from promotions; whatever
# moves them later (a refund, a dispute) moves each part against its own account.
PARTS = (("tokens", PlatformAccount.ISSUANCE), ("bonus", PlatformAccount.PROMOTIONS))


def fulfil(purchase_id: int, source: str, claim=None, **refs) -> Purchase:
    """The provider says the purchase is paid: credit its tokens, exactly once.

    `refs` records the provider's references (payment_intent_id, receipt, ...).
    `claim`, if given, runs in the same transaction once this call credits the
    purchase (matching a payment to it, say), and refuses the whole by raising.
    Safe to call any number of times, from any number of places at once.
    """
    if claim is None and db.session.get_bind().dialect.name == "postgresql":
        return _fulfil_at_once(purchase_id, source, refs)

    def work():
        purchase = _move_from(
            purchase_id, PAYABLE, PurchaseStatus.PAID, source, failure_reason=None, **refs
        )
        if purchase is None:
            return
        if claim is not None:
            claim()
        memos = (_memo(purchase), BONUS_MEMO.format(purchase=purchase_id))
        kinds = (EntryKind.PURCHASE, EntryKind.BONUS)
        first = None
        for (part, account), amount, kind, memo in zip(
            PARTS, (purchase.tokens, purchase.bonus_tokens), kinds, memos, strict=True
        ):
            if amount:
                entry = ledger.credit(
                    purchase.user_id,
                    amount,
                    key=f"purchase:{purchase_id}:{part}",
                    kind=kind,
                    source=account,
                    reference=("purchase", purchase.id),
                    memo=memo,
                )
                first = first or entry
        db.session.execute(
            update(Purchase)
            .where(Purchase.id == purchase_id)
            .values(credited_entry_id=first.id)
            .execution_options(synchronize_session=False)
        )
        notify(purchase.user_id, CREDITED_KIND, *_credited_note(purchase_id, purchase.total_tokens))

    transitions.retrying(work, "This purchase")
    return fresh(purchase_id)


CREDITED_KIND = "purchase_credited"
CREDITED_MESSAGE = "{tokens} tokens were added to your wallet (purchase #{purchase})."
BONUS_MEMO = "Bonus with purchase #{purchase}"
CREDITED_LINK = "/buy/purchases/{purchase}"


def _credited_note(purchase_id: int, total_tokens: int) -> tuple[str, str]:
    """The notification of a credit: its message and link."""
    message = CREDITED_MESSAGE.format(tokens=f"{total_tokens:,}", purchase=purchase_id)
    return message, CREDITED_LINK.format(purchase=purchase_id)


def _fulfil_at_once(purchase_id: int, source: str, refs: dict) -> Purchase:
    """`fulfil` on PostgreSQL: the credit and all it writes in one statement of its own
    (see the module's docstring).

    Nothing is read first: the statement reads the purchase and its student itself,
    and write the memos, the notification and its email from them in SQL (the same
    words as `_memo`, `_credited_note` and `email_text`, see `_paid_if_payable`)."""
    if db.session().in_transaction():
        db.session.commit()  # what the caller wrote goes first (it went with the credit before)
    now = clock.now()
    entered = utcnow()  # an entry's time is the ledger's (as `ledger.credit` stamps it)
    reference = ("purchase", purchase_id)
    base = current_app.config["APP_BASE_URL"]
    paid = core.Guard(
        _paid_if_payable,
        (tuple(sorted(refs)), base),
        {
            "p_g_purchase": purchase_id,
            "p_g_now": now,
            "p_g_source": source[:64],
            **{f"p_g_{name}": value for name, value in refs.items()},
        },
    )
    credits = tuple(
        core.RowCredit(kind, f"purchase:{purchase_id}:{part}", account)
        for (part, account), kind in zip(PARTS, (EntryKind.PURCHASE, EntryKind.BONUS), strict=True)
    )
    done = core.post_row_credits(paid, credits, reference, entered)
    if done.shown is not None:  # the purchase's row as the credit left it
        return _as_loaded(done.shown)
    # Not payable (paid before, say): the row as it is now, past any credit this
    # statement waited for.
    return fresh(purchase_id)


def _as_loaded(row: tuple) -> Purchase:
    """The purchase as the session would have loaded `row` (its columns, in order),
    without asking the database again."""
    values = {
        column.key: value.astimezone(UTC) if isinstance(value, datetime) else value
        for column, value in zip(Purchase.__table__.columns, row, strict=True)
    }
    session = db.session()
    key = identity_key(Purchase, values["id"])
    loaded = session.identity_map.get(key)
    if loaded is not None:
        for name, value in values.items():
            set_committed_value(loaded, name, value)
        return loaded
    manager = manager_of_class(Purchase)
    if manager.dispatch.load:  # (none today) as a listener of loads expects
        purchase = Purchase(**values)
        make_transient_to_detached(purchase)
        session.add(purchase)
        return purchase
    # As the ORM's loading does for a row it has not seen: a new instance, its columns
    # as loaded, in the identity map (no session transaction begins; none is needed).
    configure_mappers()
    purchase = manager.new_instance()
    state = instance_state(purchase)
    state.dict.update(values)
    state.key, state.identity_token = key, None
    state.session_id = session.hash_key
    session.identity_map._add_unpresent(state, key)
    return purchase


# -- the credit's words in SQL ---------------------------------------------------------------


def _thousands(number):
    """SQL: a whole number >= 0 as Python's f"{number:,}" writes it."""
    return func.to_char(number, literal("FM9,999,999,999,999,999,999"))


def _words(template: str, **parts):
    """SQL: `template` (str.format's {name} fields) with each field's SQL from `parts`."""
    pieces = []
    for text, field, _, _ in string.Formatter().parse(template):
        if text:
            pieces.append(literal(text, String()))
        if field is not None:
            pieces.append(parts[field])
    return func.concat(*pieces)


def _price_sql(minor, currency):
    """SQL: `money.amount(minor, currency)`."""
    whole = func.abs(minor)
    usd = _words(
        "{sign}${dollars}.{cents}",
        sign=case((minor < 0, literal("-")), else_=literal("")),
        dollars=_thousands(func.div(whole, 100)),
        cents=func.lpad(func.concat(func.mod(whole, 100)), 2, literal("0")),
    )
    kes = _words("KES {shillings}", shillings=_thousands(minor))
    return case((currency == "USD", usd), (currency == "KES", kes))


def _memo_sql(rows):
    """SQL: `_memo` of the purchase in `rows`."""
    labels = PROVIDER_LABELS.items()
    label = case(*((rows.c.provider == provider.value, literal(text)) for provider, text in labels))
    return _words(
        MEMO,
        tokens=_thousands(rows.c.tokens),
        price=_price_sql(rows.c.amount_minor, rows.c.currency),
        label=label,
    )


def _marks(base: str) -> dict[str, str]:
    """Where `email_text` puts the name, the message and the link: marks found nowhere in
    `base` (the app's base URL, which email_text writes in too)."""
    n = 0
    while True:
        marks = {name: f"\x01{name}{n}\x01" for name in ("name", "message", "link")}
        if not any(mark in base for mark in marks.values()):
            return marks
        n += 1


@cache
def _email_templates(base: str) -> tuple[str, str]:
    """`email_text`'s subject and body as str.format templates ({name}, {message}, {link}),
    for an app whose APP_BASE_URL is `base` (made with it, so they never drift apart)."""
    marks = _marks(base)
    subject, body = email_text(marks["name"], marks["message"], marks["link"])
    # A credit's message is short and of single spaces: subject_line leaves it as it is.
    longest = CREDITED_MESSAGE.format(tokens=f"{2**63:,}", purchase=2**63)
    if mail.subject_line(subject.replace(marks["message"], longest)) != subject.replace(
        marks["message"], longest
    ):
        raise RuntimeError("a credit's email subject would be cut: write it in Python")

    def template(text: str) -> str:
        text = text.replace("{", "{{").replace("}", "}}")
        for name, mark in marks.items():
            text = text.replace(mark, "{" + name + "}")
        return text

    return template(subject), template(body)


@cache
def _paid_if_payable(refs: tuple[str, ...], base: str):
    """The guard of a credit: the purchase moves to paid if it is payable, naming the
    tokens' entry it will have, with its history row, its notification and, if its
    student wants them, the notification's email (keyed by the notification); the
    credits' facts (its student, and its tokens and bonus with their memos); and the
    purchase's columns as it moved."""
    purchases, events, users = Purchase.__table__, PurchaseEvent.__table__, User.__table__
    now = bindparam("p_g_now", type_=UTCDateTime())
    was = (
        select(purchases.c.id, purchases.c.status)
        .where(purchases.c.id == bindparam("p_g_purchase", type_=BigInteger()))
        .with_for_update(of=purchases)
        .cte("was")
    )
    # `was` is the row as locked, before this UPDATE: its status is the one moved from.
    moved = (
        update(purchases)
        .where(
            purchases.c.id == was.c.id,
            or_(*(was.c.status == status for status in PAYABLE)),
            users.c.id == purchases.c.user_id,
        )
        .values(
            status=PurchaseStatus.PAID.value,
            updated_at=now,
            failure_reason=null(),
            version=purchases.c.version + 1,
            # The tokens' entry's id, taken here so the row names it in this statement
            # (the entry, written below with it, exists when its key is checked: at the
            # statement's end).
            credited_entry_id=func.nextval(literal(core.ENTRY_SEQUENCE, String())),
            **{name: bindparam(f"p_g_{name}", type_=String()) for name in refs},
        )
        .returning(
            *purchases.c,
            was.c.status.label("k_from"),  # (k_: a name the ledger's SQL keeps)
            users.c.email,
            users.c.display_name,
            users.c.email_notifications,
        )
        .cte("moved")
    )
    history = (
        insert(events)
        .from_select(
            ["purchase_id", "from_status", "to_status", "source", "note", "at"],
            select(
                moved.c.id,
                moved.c.k_from,
                literal(PurchaseStatus.PAID.value),
                bindparam("p_g_source", type_=String()),
                literal(""),
                now,
            ),
        )
        .returning(events.c.id)
        .cte("history")
    )
    message = _words(
        CREDITED_MESSAGE,
        tokens=_thousands(moved.c.tokens + moved.c.bonus_tokens),
        purchase=moved.c.id,
    )
    link = _words(CREDITED_LINK, purchase=moved.c.id)
    notes = Notification.__table__
    noted = (
        insert(notes)
        .from_select(
            ["user_id", "kind", "message", "link", "created_at"],
            select(moved.c.user_id, literal(CREDITED_KIND), func.left(message, 500), link, now),
        )
        .returning(notes.c.id, notes.c.user_id)
        .cte("noted")
    )
    subject, body = _email_templates(base)
    words = {"name": moved.c.display_name, "message": message, "link": link}
    outbox = OutboxMessage.__table__
    mailed = (
        insert(outbox)
        .from_select(
            [
                "to_address",
                "subject",
                "body",
                "kind",
                "key",
                "user_id",
                "created_at",
                "attempts",
                "next_attempt_at",
            ],
            select(
                moved.c.email,
                _words(subject, **words),
                _words(body, **words),
                literal(CREDITED_KIND),
                func.concat(literal("notification:"), noted.c.id),  # (no CAST: see core)
                noted.c.user_id,
                now,
                literal(0),
                now,
            )
            .select_from(noted.join(moved, true()))
            .where(moved.c.email_notifications.is_(True)),
        )
        .returning(outbox.c.id)
        .cte("mailed")
    )
    facts = {
        "user_id": moved.c.user_id,
        "credits": (
            {
                "tokens": moved.c.tokens,
                "memo": _memo_sql(moved),
                "entry_id": moved.c.credited_entry_id,
            },
            {"tokens": moved.c.bonus_tokens, "memo": _words(BONUS_MEMO, purchase=moved.c.id)},
        ),
    }
    shown = [moved.c[column.name] for column in purchases.c]
    return moved, (history, noted, mailed), facts, shown


def fail(purchase_id: int, source: str, reason: str) -> Purchase:
    """The payment did not go through; only a pending purchase can fail."""
    transitions.retrying(
        lambda: _move_from(
            purchase_id,
            PENDING,
            PurchaseStatus.FAILED,
            source,
            reason,
            failure_reason=reason[:255],
        ),
        "This purchase",
    )
    return fresh(purchase_id)


def expire(purchase_id: int, source: str, note: str = "The checkout expired.") -> Purchase:
    """The checkout was abandoned; only a pending purchase expires."""
    transitions.retrying(
        lambda: _move_from(purchase_id, PENDING, PurchaseStatus.EXPIRED, source, note),
        "This purchase",
    )
    return fresh(purchase_id)


# Pending purchases nobody will finish: a sandbox checkout left open, an M-Pesa
# purchase never pushed (or whose push we never heard back about).
SANDBOX_PENDING_LIMIT = timedelta(minutes=30)
UNPUSHED_LIMIT = timedelta(minutes=15)


def expire_abandoned(now: datetime | None = None, limit: int = 500) -> int:
    """The sweeper's pass over abandoned pending purchases; how many expired.

    Each expires on its own; a payment that comes in for one later is still
    credited (a provider's confirmation credits an expired purchase too).
    """
    now = now or clock.now()
    pending = Purchase.status == PurchaseStatus.PENDING.value
    sandbox_old = (Purchase.provider == Provider.SANDBOX.value) & (
        Purchase.created_at <= now - SANDBOX_PENDING_LIMIT
    )
    unpushed_old = (
        (Purchase.provider == Provider.MPESA.value)
        & Purchase.checkout_request_id.is_(None)
        & (Purchase.created_at <= now - UNPUSHED_LIMIT)
    )
    rows = db.session.execute(
        select(Purchase.id, Purchase.provider, Purchase.push_started_at)
        .where(pending, sandbox_old | unpushed_old)
        .order_by(Purchase.id)
        .limit(limit)
    ).all()
    db.session.rollback()
    for purchase_id, provider, pushed in rows:
        if provider == Provider.SANDBOX.value:
            note = "The test checkout was left unfinished."
        elif pushed is None:
            note = "The M-Pesa request was never sent."
        else:
            note = "M-Pesa never confirmed the request; a payment that arrives is still credited."
        expire(purchase_id, "sweeper", note)
    return len(rows)


def least_recently_checked(provider: Provider, limit: int, *conditions) -> list[Purchase]:
    """Pending purchases of `provider` (meeting `conditions`), the least recently asked
    about first, each marked as asked now."""
    found = list(
        db.session.scalars(
            select(Purchase)
            .where(
                Purchase.provider == provider.value,
                Purchase.status == PurchaseStatus.PENDING.value,
                *conditions,
            )
            .order_by(Purchase.checked_at.asc().nulls_first(), Purchase.id)
            .limit(limit)
        )
    )
    if found:
        db.session.execute(
            update(Purchase)
            .where(Purchase.id.in_([purchase.id for purchase in found]))
            .values(checked_at=clock.now())
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
    return found


def fresh(purchase_id: int) -> Purchase:
    return db.session.scalars(
        select(Purchase).where(Purchase.id == purchase_id).execution_options(populate_existing=True)
    ).one()


MEMO = "Bought {tokens} tokens for {price} ({label})"


def _memo(purchase: Purchase) -> str:
    price = money.amount(purchase.amount_minor, purchase.currency)
    return MEMO.format(tokens=f"{purchase.tokens:,}", price=price, label=purchase.provider_label)
