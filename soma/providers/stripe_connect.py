"""Stripe Connect for payouts: connected accounts, onboarding links, transfers, and the
readers of the events that say whether an account can be paid and what became of money.

Accounts are made with controller properties (the `type` parameter is deprecated): an
Express dashboard, the platform paying Stripe's fees and owning losses, Stripe collecting
the requirements (the classic Express combination). Money moves by a Transfer from the
platform's available balance to the connected account, keyed by the caller's
idempotency key; the account's own payout to its bank is Stripe's (and the teacher's).

Events come two ways: the Connect endpoint (`account.updated`, `payout.failed`, ... of
every connected account, each naming it in `account`) has its own signing secret,
STRIPE_CONNECT_WEBHOOK_SECRET; transfer events (`transfer.reversed`, `transfer.updated`)
are the platform's own, on the ordinary endpoint. Readers raise inbox.Malformed, with
what is wrong, for a body they cannot read; never KeyError or TypeError.

Knows nothing of teachers or withdrawals: callers pass ids, keys and metadata.
"""

import re
from dataclasses import dataclass, field

import stripe
from flask import current_app

from soma.inputs import control_characters
from soma.providers import stripe as stripe_provider
from soma.providers.inbox import Malformed

CONNECT_SECRET_SETTING = "STRIPE_CONNECT_WEBHOOK_SECRET"  # noqa: S105 (a setting's name)
CURRENCY = "usd"  # teachers are paid US dollars
# A Stripe id (acct_..., tr_..., po_..., evt_...) and an idempotency key (Stripe: at most
# 255 characters).
_STRIPE_ID = re.compile(r"[A-Za-z0-9_]{1,255}", re.ASCII)
_KEY_LIMIT = 255


def configured() -> bool:
    """Whether teachers can be paid through Stripe Connect: the API key, and the Connect
    endpoint's own signing secret (readiness comes only from its events)."""
    config = current_app.config
    return bool(config.get("STRIPE_SECRET_KEY") and config.get(CONNECT_SECRET_SETTING))


# Errors of a transfer: what each means for the money ----------------------------------


class TransferError(Exception):
    """A transfer Stripe did not confirm. `code` is Stripe's error code, if any."""

    def __init__(self, message: str, code: str | None = None, request_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class TransferRefused(TransferError):
    """Stripe answered, and made no transfer; the same request would be refused again
    (the destination cannot receive transfers, an invalid amount, ...)."""


class InsufficientPlatformBalance(TransferError):
    """The platform's available balance cannot cover the transfer: none was made.

    Stripe keeps this answer under the idempotency key (for at least 24 hours), so once
    the balance is topped up the next attempt must carry a new key (`attempt_key`):
    safe, since this answer says nothing was made.
    """


class TransferNotMade(TransferError):
    """Stripe did not take the request at all (rate limited, the API key refused): none
    was made, and the same request with the same key may be sent again later."""


class TransferOutcomeUnknown(TransferError):
    """The transfer may have been made (no answer, a 5xx, a conflict on the key). Ask
    (`transfers_in_group`, or the same request with the SAME key while Stripe keeps it),
    never assume it failed, never send it under a new key."""


class KeyConflict(TransferOutcomeUnknown):
    """The key was used before with other parameters: a transfer may exist under it.
    Retrying cannot help; find it with `transfers_in_group`."""


def attempt_key(key: str, attempt: int) -> str:
    """The idempotency key of a transfer's `attempt` (1, 2, ...): the caller's key itself at
    first. A new attempt is only for after an answer that says nothing was made
    (InsufficientPlatformBalance), and the attempt number must be stored before sending."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    return key if attempt == 1 else f"{key}:attempt-{attempt}"


def classify(error: stripe.StripeError) -> TransferError:
    """The TransferError a failed transfer request stands for."""
    code = getattr(error, "code", None)
    status = getattr(error, "http_status", None)
    message = getattr(error, "user_message", None) or str(error)
    request_id = getattr(error, "request_id", None)
    if isinstance(error, stripe.IdempotencyError):
        return KeyConflict(message, code, request_id)
    if stripe_provider.outcome_unknown(error) or status == 409:
        return TransferOutcomeUnknown(message, code, request_id)
    if code == "balance_insufficient":
        return InsufficientPlatformBalance(message, code, request_id)
    if status in (401, 403, 429) or isinstance(error, stripe.RateLimitError):
        return TransferNotMade(message, code, request_id)
    if status is None:  # (no status, yet not a connection error: cannot say it was refused)
        return TransferOutcomeUnknown(message, code, request_id)
    return TransferRefused(message, code, request_id)


# Accounts and onboarding ----------------------------------------------------------------


@dataclass(frozen=True)
class AccountLink:
    url: str
    expires_at: int  # Unix time; a link is single-use and lives a few minutes


# Where a US platform can send transfers to connected accounts without asking Stripe's sales
# team: the US, the UK, the EEA, Canada and Switzerland (docs.stripe.com/connect/cross-border-
# payouts). Kenya is not among them: Kenyan teachers are paid by M-Pesa or bank transfer.
CONNECT_COUNTRIES = {
    "US": "United States", "GB": "United Kingdom", "CA": "Canada", "CH": "Switzerland",
    "AT": "Austria", "BE": "Belgium", "BG": "Bulgaria", "HR": "Croatia", "CY": "Cyprus",
    "CZ": "Czechia", "DK": "Denmark", "EE": "Estonia", "FI": "Finland", "FR": "France",
    "DE": "Germany", "GR": "Greece", "HU": "Hungary", "IS": "Iceland", "IE": "Ireland",
    "IT": "Italy", "LV": "Latvia", "LI": "Liechtenstein", "LT": "Lithuania",
    "LU": "Luxembourg", "MT": "Malta", "NL": "Netherlands", "NO": "Norway", "PL": "Poland",
    "PT": "Portugal", "RO": "Romania", "SK": "Slovakia", "SI": "Slovenia", "ES": "Spain",
    "SE": "Sweden",
}  # fmt: skip


def create_account(
    *, idempotency_key: str, email: str | None = None, country: str | None = None,
    metadata: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """Create a connected account for payouts (Express dashboard); its id (acct_...).

    Only the `transfers` capability is requested: the platform sends money, the account
    takes no card payments. Stripe's errors are raised as they are (StripeError): with
    the same key the request can be repeated, and returns the same account.
    """
    params: dict = {
        "controller": {
            "stripe_dashboard": {"type": "express"},
            "fees": {"payer": "application"},
            "losses": {"payments": "application"},
            "requirement_collection": "stripe",
        },
        "capabilities": {"transfers": {"requested": True}},
        "metadata": dict(metadata or {}),
    }
    if email:
        params["email"] = email
    if country:
        params["country"] = country
    account = stripe_provider.client().v1.accounts.create(
        params=params, options={"idempotency_key": _key(idempotency_key)}
    )
    return account.id


def onboarding_link(account_id: str, *, refresh_url: str, return_url: str) -> AccountLink:
    """A single-use link to Stripe's hosted onboarding of `account_id`.

    Reaching `return_url` does not mean onboarding is done: readiness comes from the
    account (`account.updated`). `refresh_url` is where Stripe sends a used or expired
    link: it should make a new one and redirect (behind the teacher's log-in).
    """
    link = stripe_provider.client().v1.account_links.create(
        params={
            "account": _stripe_id(account_id),
            "type": "account_onboarding",
            "refresh_url": refresh_url,
            "return_url": return_url,
        }
    )
    return AccountLink(link.url, int(link.expires_at))


def dashboard_link(account_id: str) -> str:
    """A link into the account's Express Dashboard, where its owner changes their bank
    details (Express accounts cannot be sent an account_update link)."""
    login = stripe_provider.client().v1.accounts.login_links.create(_stripe_id(account_id))
    return login.url


def retrieve_account(account_id: str) -> "ConnectReadiness":
    """The account's readiness as Stripe has it now (events may come late and out of order:
    ask this when the latest matters). Malformed if Stripe's answer cannot be read."""
    account = stripe_provider.client().v1.accounts.retrieve(_stripe_id(account_id))
    return read_account(account.to_dict())


# Readiness --------------------------------------------------------------------------------

# Stripe's requirement names (prefixes) as a person reads them; the most specific first.
REQUIREMENT_LABELS = (
    ("external_account", "A bank account for payouts"),
    ("tos_acceptance", "Accept Stripe's terms of service"),
    ("individual.verification.additional_document", "A second identity document"),
    ("individual.verification.document", "An identity document"),
    ("individual.dob", "Date of birth"),
    ("individual.address", "Home address"),
    ("individual.id_number", "Government ID number"),
    ("individual.ssn_last_4", "Last 4 digits of the Social Security number"),
    ("individual.first_name", "Legal name"),
    ("individual.last_name", "Legal name"),
    ("individual.email", "Email address"),
    ("individual.phone", "Phone number"),
    ("individual.political_exposure", "Political exposure"),
    ("business_profile", "Business details"),
    ("business_type", "Business type"),
    ("company", "Company details"),
    ("representative", "Representative details"),
    ("owners", "Owners' details"),
    ("directors", "Directors' details"),
    ("executives", "Executives' details"),
    ("settings.payments.statement_descriptor", "Statement descriptor"),
)


def requirement_label(name: str) -> str:
    """A Stripe requirement ("individual.dob.day") as a person reads it ("Date of birth")."""
    for prefix, label in REQUIREMENT_LABELS:
        if name == prefix or name.startswith(prefix + "."):
            return label
    words = " ".join(name.replace(".", " ").replace("_", " ").split())
    return words[:1].upper() + words[1:]


@dataclass(frozen=True)
class ConnectReadiness:
    """Whether a connected account can be paid, read from the account object.

    Transfers need `capabilities.transfers` active; "ready" needs also `payouts_enabled`
    (the money can leave Stripe for the teacher's bank). `requirements` are what Stripe
    still needs now (currently due and past due), as a person reads them, once each.
    """

    account_id: str
    transfers_active: bool
    payouts_enabled: bool
    requirements: tuple[str, ...]
    past_due: bool  # some requirement is overdue: the account is or will be restricted
    disabled_reason: str | None

    @property
    def can_receive_transfers(self) -> bool:
        return self.transfers_active

    @property
    def ready(self) -> bool:
        return self.transfers_active and self.payouts_enabled


def read_account(account) -> ConnectReadiness:
    """The readiness of the account object `account` (an `account.updated` event's
    `data.object`, or a retrieved account); Malformed if it cannot be read."""
    if not isinstance(account, dict):
        raise Malformed("an account that is not an object")
    account_id = _id_in(account, "id", "acct_")
    capabilities = account.get("capabilities")
    capabilities = {} if capabilities is None else capabilities
    if not isinstance(capabilities, dict):
        raise Malformed("capabilities that are not an object")
    transfers = capabilities.get("transfers")
    if transfers is not None and transfers not in ("active", "inactive", "pending"):
        raise Malformed("a transfers capability that is not active, inactive or pending")
    payouts_enabled = account.get("payouts_enabled") or False
    if not isinstance(payouts_enabled, bool):
        raise Malformed("a payouts_enabled that is not true or false")
    requirements = account.get("requirements")
    requirements = {} if requirements is None else requirements
    if not isinstance(requirements, dict):
        raise Malformed("requirements that are not an object")
    currently_due = _names(requirements, "currently_due")
    past_due = _names(requirements, "past_due")
    reason = requirements.get("disabled_reason")
    if reason is not None and not _plain_text(reason, 100):
        raise Malformed("a disabled_reason that is not text")
    labels = tuple(dict.fromkeys(requirement_label(name) for name in past_due + currently_due))
    return ConnectReadiness(
        account_id=account_id,
        transfers_active=transfers == "active",
        payouts_enabled=payouts_enabled,
        requirements=labels,
        past_due=bool(past_due),
        disabled_reason=reason,
    )


def _names(requirements: dict, kind: str) -> list[str]:
    names = requirements.get(kind)
    names = [] if names is None else names
    if not isinstance(names, list) or not all(_plain_text(name, 200) for name in names):
        raise Malformed(f"requirements.{kind} is not a list of names")
    return names


# Transfers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    """A transfer as Stripe has it. Amounts are cents."""

    id: str
    amount: int
    amount_reversed: int
    currency: str
    destination: str
    transfer_group: str | None
    reversed: bool  # fully reversed
    metadata: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def kept(self) -> int:
        """What the connected account keeps of it: the amount less what was reversed."""
        return self.amount - self.amount_reversed


def create_transfer(
    *, amount_cents: int, destination: str, idempotency_key: str, transfer_group: str,
    metadata: dict[str, str], description: str | None = None,
) -> Transfer:  # fmt: skip
    """Transfer `amount_cents` US cents from the platform's available balance to the
    connected account `destination`, once per `idempotency_key`.

    Raises InsufficientPlatformBalance, TransferRefused or TransferNotMade when none was
    made, TransferOutcomeUnknown (KeyConflict) when one may have been. The same key with
    the same parameters returns the same transfer (while Stripe keeps the key: 24 hours
    at least; after that, look with `transfers_in_group` before sending again).
    """
    if not isinstance(amount_cents, int) or isinstance(amount_cents, bool) or amount_cents <= 0:
        raise ValueError("a transfer is a positive whole number of cents")
    params = {
        "amount": amount_cents,
        "currency": CURRENCY,
        "destination": _stripe_id(destination),
        "transfer_group": transfer_group,
        "metadata": dict(metadata),
    }
    if description:
        params["description"] = description
    try:
        transfer = stripe_provider.client().v1.transfers.create(
            params=params, options={"idempotency_key": _key(idempotency_key)}
        )
    except stripe.StripeError as error:
        raise classify(error) from error
    return _transfer_answer(transfer)


def retrieve_transfer(transfer_id: str) -> Transfer:
    """The transfer as Stripe has it now (StripeError if it cannot be asked)."""
    transfer = stripe_provider.client().v1.transfers.retrieve(_stripe_id(transfer_id))
    return _transfer_answer(transfer)


def transfers_in_group(transfer_group: str) -> list[Transfer]:
    """Every transfer made with `transfer_group`, newest first: how an unknown outcome is
    resolved when the transfer's id was never heard (and after the key has expired)."""
    found = stripe_provider.client().v1.transfers.list(
        params={"transfer_group": transfer_group, "limit": 100}
    )
    return [_transfer_answer(transfer) for transfer in found.auto_paging_iter()]


def _transfer_answer(transfer) -> Transfer:
    try:
        return read_transfer(transfer.to_dict())
    except Malformed as error:  # Stripe's own answer: not a body anyone could forge
        raise TransferOutcomeUnknown(f"a transfer Soma cannot read: {error}") from error


def read_transfer(obj) -> Transfer:
    """The transfer object `obj` (a `transfer.*` event's `data.object`, or an answer);
    Malformed if it cannot be read."""
    if not isinstance(obj, dict):
        raise Malformed("a transfer that is not an object")
    transfer_id = _id_in(obj, "id", "tr_")
    amount, reversed_amount = obj.get("amount"), obj.get("amount_reversed", 0)
    if not _cents(amount) or amount <= 0:
        raise Malformed("a transfer amount that is not a positive whole number of cents")
    if not _cents(reversed_amount) or not 0 <= reversed_amount <= amount:
        raise Malformed("an amount_reversed that is not between 0 and the amount")
    currency = obj.get("currency")
    if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
        raise Malformed("a currency that is not a currency code")
    destination = obj.get("destination")
    if isinstance(destination, dict):  # (expanded)
        destination = destination.get("id")
    if not isinstance(destination, str) or not _STRIPE_ID.fullmatch(destination):
        raise Malformed("a destination that is not an account id")
    group = obj.get("transfer_group")
    if group is not None and not _plain_text(group, 255):
        raise Malformed("a transfer_group that is not text")
    fully = obj.get("reversed", False)
    if not isinstance(fully, bool):
        raise Malformed("a reversed that is not true or false")
    metadata = obj.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise Malformed("metadata that is not an object of text")
    return Transfer(
        id=transfer_id,
        amount=amount,
        amount_reversed=reversed_amount,
        currency=currency,
        destination=destination,
        transfer_group=group,
        reversed=fully or reversed_amount == amount,
        metadata=dict(metadata),
    )


# Events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectEvent:
    """An event's envelope: what the inbox keys it by, and whose it is."""

    id: str
    type: str
    created: int  # Unix time: an older event must not undo a newer one
    livemode: bool
    account: str | None  # the connected account (Connect events); None for the platform's
    object: dict = field(hash=False)


@dataclass(frozen=True)
class PayoutFailure:
    """A connected account's payout to its bank that failed (`payout.failed`): the money is
    back in that account's Stripe balance, not the platform's. Amount in minor units."""

    account_id: str
    payout_id: str
    amount: int
    currency: str
    failure_code: str | None
    failure_message: str | None


def verified_connect_event(payload: bytes, signature: str | None):
    """The JSON of a Connect webhook, verified with the Connect endpoint's OWN secret.

    stripe_provider.BadSignature if it is not Stripe's (the platform endpoint's secret
    does not do), Unreadable if it is but is not JSON.
    """
    return stripe_provider.verified_event(payload, signature, CONNECT_SECRET_SETTING)


def read_event(event, connect: bool) -> ConnectEvent:
    """The envelope of `event` (verified JSON); Malformed if it cannot be read. A Connect
    endpoint's event (`connect`) must name its account."""
    if not isinstance(event, dict):
        raise Malformed("not a JSON object")
    event_id = _id_in(event, "id", "evt_")
    kind = event.get("type")
    if not isinstance(kind, str) or not re.fullmatch(r"[a-z_.]{1,64}", kind):
        raise Malformed("no event type")
    created = event.get("created")
    if not _cents(created) or created < 0:
        raise Malformed("no created time")
    livemode = event.get("livemode")
    if not isinstance(livemode, bool):
        raise Malformed("no livemode")
    account = event.get("account")
    if account is not None or connect:
        account = _id_in(event, "account", "acct_")
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise Malformed("no data.object")
    return ConnectEvent(event_id, kind, created, livemode, account, obj)


def livemode_expected() -> bool:
    """Whether events should be live: the secret key is a live one. A production endpoint is
    sent test events too; one of the other mode is to be ignored."""
    key = current_app.config.get("STRIPE_SECRET_KEY") or ""
    return key.startswith(("sk_live_", "rk_live_"))


def read_account_updated(event) -> ConnectReadiness:
    """`account.updated` (Connect): the account's readiness; Malformed if unreadable, or if
    the object is not the account the event names."""
    envelope = read_event(event, connect=True)
    readiness = read_account(envelope.object)
    if readiness.account_id != envelope.account:
        raise Malformed("an account.updated about another account than its own")
    return readiness


def read_transfer_event(event) -> Transfer:
    """`transfer.reversed`, `transfer.updated`, `transfer.created` (platform): the
    transfer as it now stands (`amount_reversed`, `reversed`); Malformed if unreadable."""
    return read_transfer(read_event(event, connect=False).object)


def read_payout_failed(event) -> PayoutFailure:
    """`payout.failed` (Connect): whose payout failed, and why; Malformed if unreadable."""
    envelope = read_event(event, connect=True)
    payout = envelope.object
    payout_id = _id_in(payout, "id", "po_")
    amount = payout.get("amount")
    if not _cents(amount) or amount < 0:
        raise Malformed("a payout amount that is not a whole number")
    currency = payout.get("currency")
    if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
        raise Malformed("a currency that is not a currency code")
    code, message = payout.get("failure_code"), payout.get("failure_message")
    if code is not None and not _plain_text(code, 100):
        raise Malformed("a failure_code that is not text")
    if message is not None and not isinstance(message, str):
        raise Malformed("a failure_message that is not text")
    if message is not None:
        message = " ".join("".join(c for c in message if not control_characters(c)).split())
    return PayoutFailure(envelope.account, payout_id, amount, currency, code,
                         message[:300] if message else None)  # fmt: skip


# Checks -----------------------------------------------------------------------------------


def _cents(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def _plain_text(value, limit: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= limit and not control_characters(value)


def _id_in(obj: dict, name: str, prefix: str) -> str:
    value = obj.get(name)
    if (
        not isinstance(value, str)
        or not value.startswith(prefix)
        or not _STRIPE_ID.fullmatch(value)
    ):
        raise Malformed(f"no {name} of the form {prefix}...")
    return value


def _stripe_id(value: str) -> str:
    if not isinstance(value, str) or not _STRIPE_ID.fullmatch(value):
        raise ValueError(f"not a Stripe id: {value!r}")
    return value


def _key(value: str) -> str:
    if not _plain_text(value, _KEY_LIMIT):
        raise ValueError(f"an idempotency key is 1 to {_KEY_LIMIT} printable characters")
    return value
