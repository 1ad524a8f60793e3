"""A small client of Safaricom's Daraja API for M-Pesa STK push, built on `requests`.

- an OAuth token, fetched with the consumer key and secret and cached until a
  minute before it expires;
- STK push (the customer's phone asks for their M-Pesa PIN) and the STK status
  query, which confirms a payment before it is credited;
- Kenyan phone numbers validated and normalised to 2547XXXXXXXX / 2541XXXXXXXX.

Configured by MPESA_BASE_URL, MPESA_CONSUMER_KEY, MPESA_CONSUMER_SECRET,
MPESA_SHORTCODE and MPESA_PASSKEY (tests point the base URL at a fake).
"""

import base64
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import requests
import urllib3
from flask import current_app

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
    """Daraja did not do what was asked (unreachable, refused, or an unexpected answer)."""


class OutcomeUnknown(DarajaError):
    """The request may have reached Daraja, but no answer came back (a time-out, a connection
    lost after sending, a server error): whether it was done is not known, and must be asked."""


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


class Daraja:
    def __init__(self, base_url: str, key: str, secret: str, shortcode: str, passkey: str):
        self.base_url = base_url.rstrip("/")
        self.key, self.secret = key, secret
        self.shortcode, self.passkey = shortcode, passkey
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
            if sent_matters and not _never_sent(error):
                raise OutcomeUnknown(f"no answer from Daraja: {error}") from error
            raise DarajaError(f"Daraja unreachable: {error}") from error
        if sent_matters and response.status_code >= 500:
            raise OutcomeUnknown(f"Daraja answered {response.status_code}: {response.text[:200]}")
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        # The status query answers 500 "being processed" while the customer decides.
        processing = pending_ok and answer.get("errorCode") == STILL_PROCESSING
        if response.status_code >= 400 and not processing:
            raise DarajaError(f"Daraja answered {response.status_code}: {answer or response.text}")
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
        clients["client"] = Daraja(
            config["MPESA_BASE_URL"],
            config["MPESA_CONSUMER_KEY"],
            config["MPESA_CONSUMER_SECRET"],
            config["MPESA_SHORTCODE"],
            config["MPESA_PASSKEY"],
        )
    return clients["client"]


def result_message(code: str | None, desc: str) -> str:
    return RESULT_MESSAGES.get(str(code), f"M-Pesa did not take the payment: {desc or code}.")
