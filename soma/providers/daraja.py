"""A small client of Safaricom's Daraja API for M-Pesa, built on `requests`.

- an OAuth token, fetched with the consumer key and secret and cached until a
  minute before it expires;
- STK push (the customer's phone asks for their M-Pesa PIN) and the STK status
  query, which confirms a payment before it is credited;
- B2C payments (money out to a customer's M-Pesa), the Transaction Status query
  that resolves one whose answer never came, and readers of their callbacks
  (see "B2C" below);
- Kenyan phone numbers validated and normalised to 2547XXXXXXXX / 2541XXXXXXXX.

Configured by MPESA_BASE_URL, MPESA_CONSUMER_KEY, MPESA_CONSUMER_SECRET,
MPESA_SHORTCODE and MPESA_PASSKEY (tests point the base URL at a fake); B2C also by
MPESA_B2C_SHORTCODE, MPESA_B2C_INITIATOR_NAME, MPESA_B2C_INITIATOR_PASSWORD and
MPESA_B2C_CERT_PATH.
"""

import base64
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import current_app

from soma.inputs import control_characters
from soma.providers.inbox import Malformed

NAIROBI = timezone(timedelta(hours=3))  # Daraja's timestamps are East Africa Time
TIMEOUT = 10  # seconds for each call

# What M-Pesa's result codes mean to the student.
RESULT_MESSAGES = {
    "1": "Your M-Pesa balance is too low for this payment. Top up and try again.",
    "1032": "You cancelled the M-Pesa request on your phone. Nothing was charged.",
    "1037": "M-Pesa could not reach your phone in time. Make sure it is on and try again.",
    "2001": "The M-Pesa PIN was wrong. Nothing was charged; try again.",
}


class DarajaError(Exception):
    """Daraja did not do what was asked (unreachable, refused, or an unexpected answer).

    `code` is Daraja's own code for it when it gave one (an errorCode such as
    "400.002.02", or a ResponseCode), else None.
    """

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class OutcomeUnknown(DarajaError):
    """The request may have reached Daraja, but no answer came back (a time-out, a connection
    lost after sending, a server error): whether it was done is not known, and must be asked."""


class DuplicateRequest(OutcomeUnknown):
    """Daraja already has a request with this OriginatorConversationID, so it did not take
    this one again: the first may have been paid. Nothing new happened; ask its status."""


class Refused(DarajaError):
    """Daraja answered, and did not accept the request: nothing will be done under it.

    `status` is the HTTP status. `retryable` says the refusal is about the moment (an
    expired token, a rate limit), not about the request: sending it again later, with
    the same OriginatorConversationID, may be accepted.
    """

    def __init__(self, message: str, code: str | None = None, status: int = 400):
        super().__init__(message, code)
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status in (401, 429)


class NotSent(DarajaError):
    """The request never left (no connection, no token, no usable certificate): nothing was
    done, and it may be sent again later with the same OriginatorConversationID."""


class InvalidPhone(ValueError):
    pass


_PHONE = re.compile(r"^(?:\+?254|0)?([71][0-9]{8})$", re.ASCII)
# The status query's answer while the customer has not answered the prompt yet.
STILL_PROCESSING = "500.001.1001"


def normalise_phone(text: str) -> str:
    """A Kenyan mobile number as Daraja wants it (2547XXXXXXXX); InvalidPhone if it is not one."""
    digits = re.sub(r"[\s\-()]", "", text or "")
    match = _PHONE.match(digits)
    if not match:
        raise InvalidPhone(
            "Enter a Kenyan M-Pesa number, such as 0712 345 678 or +254 712 345 678."
        )
    return "254" + match.group(1)


def configured() -> bool:
    config = current_app.config
    names = ("MPESA_CONSUMER_KEY", "MPESA_CONSUMER_SECRET", "MPESA_SHORTCODE", "MPESA_PASSKEY",
             "MPESA_CALLBACK_SECRET")  # fmt: skip
    return all(config.get(name) for name in names)


B2C_SETTINGS = ("MPESA_CONSUMER_KEY", "MPESA_CONSUMER_SECRET", "MPESA_CALLBACK_SECRET",
                "MPESA_B2C_SHORTCODE", "MPESA_B2C_INITIATOR_NAME",
                "MPESA_B2C_INITIATOR_PASSWORD", "MPESA_B2C_CERT_PATH")  # fmt: skip


def b2c_configured() -> bool:
    """Whether M-Pesa payouts can be sent: the app's keys, the B2C shortcode and initiator,
    the certificate, and the callback secret (the result URLs' secret part)."""
    config = current_app.config
    return all(config.get(name) for name in B2C_SETTINGS)


@dataclass(frozen=True)
class StkPush:
    merchant_request_id: str
    checkout_request_id: str
    customer_message: str


@dataclass(frozen=True)
class StkStatus:
    result_code: str | None  # None while the customer has not answered yet
    result_desc: str

    @property
    def paid(self) -> bool:
        return self.result_code == "0"

    @property
    def final(self) -> bool:
        """Whether the customer's answer is known (4999: Daraja is still processing it)."""
        return self.result_code not in (None, "4999")


@dataclass(frozen=True)
class B2CInitiator:
    """Who sends B2C payments: the API operator ("initiator") of the B2C shortcode.

    The password is never sent as is: each request carries it encrypted with the public
    key of Safaricom's certificate (the file at `certificate_path`; sandbox and
    production certificates differ).
    """

    name: str
    password: str = field(repr=False)
    certificate_path: str
    shortcode: str


@dataclass(frozen=True)
class Accepted:
    """Daraja took a request for processing (ResponseCode 0). Nothing is paid yet: the
    outcome comes later, to the request's result URL."""

    conversation_id: str
    originator_conversation_id: str
    description: str


class Daraja:
    def __init__(
        self, base_url: str, key: str, secret: str, shortcode: str, passkey: str,
        initiator: B2CInitiator | None = None,
    ):  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.key, self.secret = key, secret
        self.shortcode, self.passkey = shortcode, passkey
        self.initiator = initiator
        self.http = requests.Session()
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    # The OAuth token ---------------------------------------------------------------------

    def token(self) -> str:
        with self._lock:
            if self._token and self._token[1] > time.monotonic():
                return self._token[0]
            answer = self._call("GET", "/oauth/v1/generate?grant_type=client_credentials",
                                auth=(self.key, self.secret))  # fmt: skip
            try:
                token, lifetime = answer["access_token"], int(answer.get("expires_in", 3599))
            except (KeyError, ValueError) as error:
                raise DarajaError(f"Daraja gave no token: {answer}") from error
            self._token = (token, time.monotonic() + max(lifetime - 60, 0))
            return token

    # STK push and its status ---------------------------------------------------------------

    def _password(self) -> tuple[str, str]:
        stamp = datetime.now(NAIROBI).strftime("%Y%m%d%H%M%S")
        raw = f"{self.shortcode}{self.passkey}{stamp}".encode()
        return base64.b64encode(raw).decode(), stamp

    def stk_push(self, phone: str, amount: int, reference: str, callback_url: str) -> StkPush:
        """Ask the phone for its PIN. DarajaError if refused; OutcomeUnknown if it may have
        been sent (the customer may then pay, and the callback still comes)."""
        password, stamp = self._password()
        answer = self._authorized("/mpesa/stkpush/v1/processrequest", {
            "BusinessShortCode": self.shortcode,
            "Password": password,
            "Timestamp": stamp,
            "TransactionType": "CustomerPayBillOnline",
            "Amount": amount,
            "PartyA": phone,
            "PartyB": self.shortcode,
            "PhoneNumber": phone,
            "CallBackURL": callback_url,
            "AccountReference": reference,
            "TransactionDesc": "Soma tokens",
        }, sent_matters=True)  # fmt: skip
        if str(answer.get("ResponseCode")) != "0" or not answer.get("CheckoutRequestID"):
            raise DarajaError(answer.get("errorMessage") or answer.get("ResponseDescription")
                              or f"STK push refused: {answer}")  # fmt: skip
        return StkPush(answer.get("MerchantRequestID", ""), answer["CheckoutRequestID"],
                       answer.get("CustomerMessage", ""))  # fmt: skip

    def stk_status(self, checkout_request_id: str) -> StkStatus:
        password, stamp = self._password()
        answer = self._authorized("/mpesa/stkpushquery/v1/query", {
            "BusinessShortCode": self.shortcode,
            "Password": password,
            "Timestamp": stamp,
            "CheckoutRequestID": checkout_request_id,
        }, pending_ok=True)  # fmt: skip
        code = answer.get("ResultCode")
        return StkStatus(None if code is None else str(code),
                         answer.get("ResultDesc") or answer.get("errorMessage") or "")  # fmt: skip

    # B2C: paying out, and asking what became of a payment --------------------------------

    def b2c_payment(
        self, *, originator_conversation_id: str, phone: str, amount_kes: int, remarks: str,
        result_url: str, timeout_url: str, occasion: str | None = None,
    ) -> Accepted:  # fmt: skip
        """Send `amount_kes` whole shillings to `phone` (BusinessPayment, v3).

        `originator_conversation_id` is the caller's idempotency key: Daraja refuses a
        second request with the same one, so a retry with the same key never pays twice,
        and a new key must never be used for the same payout. Accepted means taken for
        processing, not paid: the result comes to `result_url` (or, if it waited too long
        in Daraja's queue, a time-out to `timeout_url`).

        Raises DuplicateRequest or OutcomeUnknown when it may have been taken (ask its
        status; never treat it as failed), Refused when Daraja said no (nothing will be
        paid under it), NotSent when it never left. ValueError for arguments Daraja would
        refuse anyway (InvalidPhone for the phone).
        """
        initiator = self._initiator()
        _check_key(originator_conversation_id)
        _check_text("Remarks", remarks, 2, 100)
        if occasion is not None:
            _check_text("Occasion", occasion, 1, 100)
        body = {
            "OriginatorConversationID": originator_conversation_id,
            "InitiatorName": initiator.name,
            "SecurityCredential": self._credential(initiator),
            "CommandID": "BusinessPayment",
            "Amount": _whole_shillings(amount_kes),
            "PartyA": initiator.shortcode,
            "PartyB": normalise_phone(phone),
            "Remarks": remarks,
            "QueueTimeOutURL": timeout_url,
            "ResultURL": result_url,
        }
        if occasion is not None:
            body["Occassion"] = occasion  # (Daraja's B2C documentation spells it so)
        return self._send("/mpesa/b2c/v3/paymentrequest", body, originator_conversation_id)

    def transaction_status(
        self, *, result_url: str, timeout_url: str, originator_conversation_id: str | None = None,
        transaction_id: str | None = None, remarks: str = "Payout status",
        occasion: str | None = None,
    ) -> Accepted:  # fmt: skip
        """Ask what became of a payment, by the OriginatorConversationID it was sent with or
        by its M-Pesa receipt (TransactionID). The answer comes later, to `result_url`
        (read it with `read_status_result`). `occasion` comes back in the answer's
        ReferenceData: by default the id asked about, so the answer names its payment.

        The query moves no money: any failure raises DarajaError (OutcomeUnknown when its
        answer may still come), and it may be asked again.
        """
        if not (originator_conversation_id or transaction_id):
            raise ValueError("ask by OriginatorConversationID or by TransactionID")
        initiator = self._initiator()
        _check_text("Remarks", remarks, 2, 100)
        body = {
            "Initiator": initiator.name,
            "SecurityCredential": self._credential(initiator),
            "CommandID": "TransactionStatusQuery",
            "PartyA": initiator.shortcode,
            "IdentifierType": "4",  # (4: an organisation's shortcode)
            "ResultURL": result_url,
            "QueueTimeOutURL": timeout_url,
            "Remarks": remarks,
            "Occasion": occasion or originator_conversation_id or transaction_id,
        }
        if originator_conversation_id:
            _check_key(originator_conversation_id)
            body["OriginalConversationID"] = originator_conversation_id
        if transaction_id:
            _check_key(transaction_id)
            body["TransactionID"] = transaction_id
        return self._send("/mpesa/transactionstatus/v1/query", body, None)

    def _initiator(self) -> B2CInitiator:
        if self.initiator is None:
            raise NotSent("M-Pesa B2C is not configured (MPESA_B2C_* settings)")
        return self.initiator

    def _credential(self, initiator: B2CInitiator) -> str:
        try:
            certificate = Path(initiator.certificate_path).read_bytes()
            return security_credential(initiator.password, certificate)
        except (OSError, ValueError) as error:
            raise NotSent(f"no usable B2C certificate: {error}") from error

    def _send(self, path: str, body: dict, ours: str | None) -> Accepted:
        """POST a B2C-family request (one that starts something at Daraja, whose answer
        comes later); its acceptance, checked. `ours` is the OriginatorConversationID sent,
        if any."""
        try:
            token = self.token()
        except DarajaError as error:
            raise NotSent(f"no Daraja token: {error}") from error
        try:
            answer = self._call(
                "POST", path, json=body, headers={"Authorization": f"Bearer {token}"},
                sent_matters=True,
            )  # fmt: skip
        except Refused as refused:
            if refused.status == 401:  # the token was revoked early: fetch a new one next time
                with self._lock:
                    self._token = None
            raise
        code = answer.get("ResponseCode")
        description = answer.get("ResponseDescription") or answer.get("errorMessage") or ""
        if code is None:  # a 2xx Soma cannot read, after sending: it may have been taken
            raise OutcomeUnknown(f"an answer Soma cannot read: {answer}")
        if str(code) != "0":
            raise Refused(
                f"Daraja did not accept the request: {description or answer}", str(code), 200
            )
        conversation_id = answer.get("ConversationID")
        echoed = answer.get("OriginatorConversationID")
        if not isinstance(conversation_id, str) or (
            ours is not None and echoed is not None and echoed != ours
        ):
            # Taken, by its code, but not an answer we can read: it may be done.
            raise OutcomeUnknown(f"an acceptance Soma cannot read: {answer}")
        return Accepted(conversation_id, str(echoed or ours or ""), str(description)[:200])

    # HTTP ----------------------------------------------------------------------------------

    def _authorized(
        self, path: str, body: dict, pending_ok: bool = False, sent_matters: bool = False
    ) -> dict:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return self._call(
            "POST", path, json=body, headers=headers, pending_ok=pending_ok,
            sent_matters=sent_matters,
        )  # fmt: skip

    def _call(
        self, method: str, path: str, pending_ok: bool = False, sent_matters: bool = False,
        **kwargs,
    ) -> dict:  # fmt: skip
        """One request. With `sent_matters` (a request that does something, like a push),
        an error after the request may have been sent is OutcomeUnknown, not DarajaError."""
        try:
            response = self.http.request(method, self.base_url + path, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as error:
            if not sent_matters:
                raise DarajaError(f"Daraja unreachable: {error}") from error
            if _never_sent(error):
                raise NotSent(f"Daraja unreachable: {error}") from error
            raise OutcomeUnknown(f"no answer from Daraja: {error}") from error
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        code = answer.get("errorCode")
        code = str(code) if code is not None else None
        if sent_matters and "duplicate" in str(answer.get("errorMessage", "")).lower():
            raise DuplicateRequest(f"Daraja has this request already: {answer}", code)
        if sent_matters and response.status_code >= 500:
            raise OutcomeUnknown(
                f"Daraja answered {response.status_code}: {response.text[:200]}", code
            )
        # The status query answers 500 "being processed" while the customer decides.
        processing = pending_ok and code == STILL_PROCESSING
        if response.status_code >= 400 and not processing:
            message = f"Daraja answered {response.status_code}: {answer or response.text[:200]}"
            if sent_matters:
                raise Refused(message, code, response.status_code)
            raise DarajaError(message, code)
        return answer


def _never_sent(error: requests.RequestException) -> bool:
    """Whether the request surely never left: no connection was ever made."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    reason = getattr(error.args[0] if error.args else None, "reason", None)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def client() -> Daraja:
    """The app's Daraja client (one per app, so its token is shared)."""
    clients = current_app.extensions.setdefault("soma_daraja", {})
    if "client" not in clients:
        config = current_app.config
        initiator = None
        if all(config.get(name) for name in B2C_SETTINGS):
            initiator = B2CInitiator(
                config["MPESA_B2C_INITIATOR_NAME"],
                config["MPESA_B2C_INITIATOR_PASSWORD"],
                config["MPESA_B2C_CERT_PATH"],
                config["MPESA_B2C_SHORTCODE"],
            )
        clients["client"] = Daraja(
            config["MPESA_BASE_URL"],
            config["MPESA_CONSUMER_KEY"],
            config["MPESA_CONSUMER_SECRET"],
            config["MPESA_SHORTCODE"],
            config["MPESA_PASSKEY"],
            initiator,
        )
    return clients["client"]


def result_message(code: str | None, desc: str) -> str:
    return RESULT_MESSAGES.get(str(code), f"M-Pesa did not take the payment: {desc or code}.")


# B2C -----------------------------------------------------------------------------------
#
# A payout is sent once, keyed by its OriginatorConversationID, and answered three ways:
# accepted (the result comes later, to the ResultURL), refused (nothing will be paid), or
# not known (a time-out, a lost connection after sending, a 5xx, a duplicate): then the
# Transaction Status query, whose answer also comes later, says what became of it.
# Safaricom signs no callback and never retries one, so a lost result is found only by
# asking; a time-out callback means "unknown", never "failed".

# Our keys and Daraja's ids (ConversationID, receipts): printable ASCII, no spaces.
ID_LIMIT = 64
_ID = re.compile(rf"[!-~]{{1,{ID_LIMIT}}}", re.ASCII)
_KEY = re.compile(rf"[A-Za-z0-9_-]{{1,{ID_LIMIT}}}", re.ASCII)
# A ResultCode: digits mostly, but some are not ("SFC_IC0003": an unknown number).
_RESULT_CODE = re.compile(r"[A-Za-z0-9_.]{1,16}", re.ASCII)

B2C_PAID = "0"
B2C_INSUFFICIENT_FLOAT = "1"  # the B2C utility account (our float) lacks the funds
B2C_DUPLICATE = "15"  # a repeat of a request already taken: says nothing of the first
# Failures that are ours (the float, the shortcode, the initiator), not the recipient's:
# an operator must act, and the teacher did nothing wrong.
B2C_PLATFORM_CODES = frozenset({"1", "11", "17", "21", "2001", "2006", "2028", "8006"})

B2C_RESULT_MESSAGES = {
    "2": "The amount is below M-Pesa's minimum for a payment.",
    "3": "The amount is above M-Pesa's maximum for one payment.",
    "4": "The payment would pass the receiving number's daily M-Pesa limit.",
    "8": "The payment would pass the receiving number's M-Pesa balance limit.",
    "2040": "The number is not registered for M-Pesa.",
    "SFC_IC0003": "The number is not an M-Pesa number.",
}


def security_credential(password: str, certificate: bytes) -> str:
    """The initiator's password as Daraja wants it: RSA-encrypted with the public key of
    Safaricom's certificate (PEM or DER), PKCS#1 v1.5 padding, base64. ValueError if the
    certificate is not an RSA one (or the password does not fit its key)."""
    try:
        loaded = x509.load_pem_x509_certificate(certificate)
    except ValueError:
        loaded = x509.load_der_x509_certificate(certificate)
    public_key = loaded.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError("Safaricom's certificate should hold an RSA key")
    encrypted = public_key.encrypt(password.encode(), padding.PKCS1v15())
    return base64.b64encode(encrypted).decode()


def _check_key(value) -> None:
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise ValueError(f"a key is 1 to {ID_LIMIT} letters, digits, - or _")


def _check_text(name: str, value, shortest: int, longest: int) -> None:
    if (not isinstance(value, str) or not shortest <= len(value) <= longest
            or control_characters(value)):  # fmt: skip
        raise ValueError(f"{name} is text of {shortest} to {longest} printable characters")


def _whole_shillings(amount) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValueError("a B2C amount is a positive whole number of shillings")
    return amount


@dataclass(frozen=True)
class B2CResult:
    """A B2C result callback, read. Only `paid` means the money left; `duplicate` is the
    answer to a repeated request and says nothing about the first; any other code is a
    payment that was not made."""

    originator_conversation_id: str
    conversation_id: str
    code: str
    desc: str
    transaction_id: str | None
    amount_kes: int | None  # set when paid
    receipt: str | None  # set when paid (the M-Pesa receipt, e.g. "SG632NMUAB")
    receiver: str | None  # "2547... - NAME", as M-Pesa shows the recipient
    completed_at: datetime | None  # UTC
    utility_funds_cents: int | None  # our float after it, for a "float low" alert

    @property
    def paid(self) -> bool:
        return self.code == B2C_PAID

    @property
    def duplicate(self) -> bool:
        return self.code == B2C_DUPLICATE

    @property
    def failed(self) -> bool:
        """Not paid, for good: a result of the request itself, not of a repeat of it."""
        return not self.paid and not self.duplicate

    @property
    def platform_side(self) -> bool:
        """A failure an operator must fix (our float, shortcode or initiator)."""
        return self.code in B2C_PLATFORM_CODES

    @property
    def event_id(self) -> str:
        """The inbox's id for this callback: a repeat of it is the same event."""
        return f"b2c:{self.originator_conversation_id}:{self.conversation_id}:{self.code}"

    def message(self) -> str:
        """What to tell the recipient about a failure."""
        if self.platform_side:
            return "M-Pesa could not send the payment from our side. We are looking into it."
        return B2C_RESULT_MESSAGES.get(self.code, f"M-Pesa did not send the payment: {self.desc}")


@dataclass(frozen=True)
class B2CTimeout:
    """A QueueTimeOutURL callback: the request waited too long in Daraja's queue. Whether
    it was paid is NOT known: ask its status, never treat it as failed."""

    originator_conversation_id: str
    conversation_id: str
    desc: str

    @property
    def event_id(self) -> str:
        return f"b2c-timeout:{self.originator_conversation_id}:{self.conversation_id}"


@dataclass(frozen=True)
class StatusResult:
    """The answer to a Transaction Status query (posted to its own ResultURL).

    `code` is the query's: "0" means M-Pesa found the transaction, and
    `transaction_status` says what became of it ("Completed" when paid). Any other code
    (not found, the query refused) says nothing about the payment: never release on it.
    """

    code: str
    desc: str
    conversation_id: str  # the query's own
    asked_about: str | None  # what the query asked about (its Occasion, echoed back)
    originator_conversation_id: str | None  # the payment's, when M-Pesa gives it
    transaction_status: str | None
    receipt: str | None
    amount_kes: int | None
    finalised_at: datetime | None  # UTC

    @property
    def completed(self) -> bool:
        """The payment was made: found, completed, with its receipt and amount."""
        return (self.code == "0" and self.transaction_status == "Completed"
                and self.receipt is not None and self.amount_kes is not None)  # fmt: skip

    @property
    def payment_key(self) -> str | None:
        """The payment's OriginatorConversationID: as M-Pesa names it, else as we asked."""
        return self.originator_conversation_id or self.asked_about

    @property
    def event_id(self) -> str:
        return f"b2c-status:{self.conversation_id}:{self.code}"


def read_b2c_result(body) -> B2CResult:
    """The B2C result callback in `body` (parsed JSON); Malformed, with what is wrong, if it
    is not one. A paid result must carry its amount and receipt."""
    result = _result(body)
    code = _result_code(result)
    parameters = _named(result.get("ResultParameters"), "ResultParameter", "Key")
    amount = parameters.get("TransactionAmount")
    receipt = parameters.get("TransactionReceipt") or result.get("TransactionID")
    if code == B2C_PAID:
        if _whole(amount) is None:
            raise Malformed("a paid result without a whole TransactionAmount")
        if not _is_id(receipt):
            raise Malformed("a paid result without a TransactionReceipt")
    return B2CResult(
        originator_conversation_id=_required_id(result, "OriginatorConversationID"),
        conversation_id=_optional_id(result, "ConversationID") or "",
        code=code,
        desc=_desc(result),
        transaction_id=_optional_id(result, "TransactionID"),
        amount_kes=_whole(amount) if code == B2C_PAID else None,
        receipt=receipt if code == B2C_PAID else None,
        receiver=_display(parameters.get("ReceiverPartyPublicName")),
        completed_at=_when(parameters.get("TransactionCompletedDateTime")),
        utility_funds_cents=_cents(parameters.get("B2CUtilityAccountAvailableFunds")),
    )


def read_b2c_timeout(body) -> B2CTimeout:
    """The time-out callback in `body`; Malformed if it names no request. Daraja does not
    document its shape: it is read as a `Result` (or, failing that, a flat) body carrying
    the OriginatorConversationID."""
    result = body.get("Result") if isinstance(body, dict) else None
    result = result if isinstance(result, dict) else body
    if not isinstance(result, dict):
        raise Malformed("not a JSON object")
    return B2CTimeout(
        originator_conversation_id=_required_id(result, "OriginatorConversationID"),
        conversation_id=_optional_id(result, "ConversationID") or "",
        desc=_desc(result),
    )


def read_status_result(body) -> StatusResult:
    """The Transaction Status answer in `body`; Malformed, with what is wrong, if it is not
    one. A completed one must carry its receipt and amount."""
    result = _result(body)
    code = _result_code(result)
    parameters = _named(result.get("ResultParameters"), "ResultParameter", "Key")
    reference = _named(result.get("ReferenceData"), "ReferenceItem", "Key")
    status = parameters.get("TransactionStatus")
    if status is not None and (
        not isinstance(status, str) or not 0 < len(status) <= 64 or control_characters(status)
    ):
        raise Malformed("a TransactionStatus that is not text")
    receipt = parameters.get("ReceiptNo")
    if receipt is not None and not _is_id(receipt):
        raise Malformed("a ReceiptNo that is not a receipt")
    amount = parameters.get("Amount")
    if amount is not None and _whole(amount) is None:
        raise Malformed("an Amount that is not a whole number of shillings")
    asked = reference.get("Occasion")
    payment = parameters.get("OriginatorConversationID")
    return StatusResult(
        code=code,
        desc=_desc(result),
        conversation_id=_optional_id(result, "ConversationID") or "",
        asked_about=asked if _is_id(asked) else None,
        originator_conversation_id=payment if _is_id(payment) else None,
        transaction_status=status,
        receipt=receipt,
        amount_kes=None if amount is None else _whole(amount),
        finalised_at=_when(parameters.get("FinalisedTime")),
    )


def _result(body) -> dict:
    result = body.get("Result") if isinstance(body, dict) else None
    if not isinstance(result, dict):
        raise Malformed("no Result")
    return result


def _result_code(result: dict) -> str:
    code = result.get("ResultCode")
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < 10**9:
        code = str(code)
    if not isinstance(code, str) or not _RESULT_CODE.fullmatch(code):
        raise Malformed("no ResultCode")
    return code


def _is_id(value) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _required_id(result: dict, name: str) -> str:
    value = result.get(name)
    if not _is_id(value):
        raise Malformed(f"no {name} of 1 to {ID_LIMIT} printable characters")
    return value


def _optional_id(result: dict, name: str) -> str | None:
    value = result.get(name)
    if value is None or value == "":
        return None
    if not _is_id(value):
        raise Malformed(f"a {name} that is not an id")
    return value


def _desc(result: dict) -> str:
    desc = result.get("ResultDesc") or ""
    if not isinstance(desc, str) or control_characters(desc, multiline=True):
        raise Malformed("a ResultDesc that is not text")
    return " ".join(desc.split())[:200]


def _named(block, list_name: str, key_name: str) -> dict:
    """{Key: Value} of a Daraja list (ResultParameters.ResultParameter, ReferenceData.
    ReferenceItem), which is a list, or a single item when there is one."""
    if block is None or block == "":
        return {}
    items = block.get(list_name) if isinstance(block, dict) else None
    items = [items] if isinstance(items, dict) else items
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and isinstance(item.get(key_name), str) for item in items
    ):
        raise Malformed(f"{list_name} is not a list of named items")
    return {item[key_name]: item.get("Value") for item in items}


def _decimal(value) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _whole(value) -> int | None:
    """A positive whole number of shillings ("10", 10, "10.00"), else None."""
    number = _decimal(value)
    if number is None or number != number.to_integral_value() or not 0 < number < 10**12:
        return None
    return int(number)


def _cents(value) -> int | None:
    """An amount of shillings with up to two decimals, in cents; None if it is not one."""
    number = _decimal(value)
    if number is None or abs(number) >= 10**15:
        return None
    cents = number * 100
    return int(cents) if cents == cents.to_integral_value() else None


def _display(value) -> str | None:
    """Text to show (a recipient's name), control characters dropped; None if not text."""
    if not isinstance(value, str):
        return None
    text = " ".join("".join(c for c in value if not control_characters(c)).split())
    return text[:100] or None


def _when(value) -> datetime | None:
    """M-Pesa's time ("06.07.2024 22:48:52" or 20240706224852, Nairobi) as UTC, if readable."""
    for pattern in ("%d.%m.%Y %H:%M:%S", "%Y%m%d%H%M%S"):
        try:
            local = datetime.strptime(str(value), pattern).replace(tzinfo=NAIROBI)
        except ValueError:
            continue
        return local.astimezone(UTC)
    return None
