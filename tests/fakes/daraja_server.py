"""A small fake of Safaricom's Daraja API: OAuth, STK push and the STK status query, B2C
payments and the Transaction Status query.

Tests decide how each push ends (`finish`) and build the callbacks Safaricom
would send (`callback`). For B2C, the fake holds the private key of a self-signed
certificate (`make_certificate`) and DECRYPTS each SecurityCredential, so a test
proves the encryption; it keeps the money it sent (`paid`), refuses a second request
with the same OriginatorConversationID as Daraja does, and builds the result,
time-out and status callbacks (`result_of`, `b2c_timeout`, `status_result`).
"""

import base64
import datetime
import json
import re
import secrets
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.fakes import FakeServer, JsonHandler

KEY, SECRET = "consumer-key", "consumer-secret"
INITIATOR, INITIATOR_PASSWORD = "soma-initiator", "Initiator#Pass1"
B2C_SHORTCODE = "600996"
NAIROBI = datetime.timezone(datetime.timedelta(hours=3))
_MSISDN = re.compile(r"254[71][0-9]{8}")


def make_certificate(directory: Path) -> tuple[Path, rsa.RSAPrivateKey]:
    """A self-signed certificate standing for Safaricom's (written as PEM), and its key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake.safaricom.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = directory / "safaricom-test.cer"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path, key


def decrypt_credential(key: rsa.RSAPrivateKey | None, credential) -> str | None:
    """The password inside a SecurityCredential, as Safaricom reads it; None if unreadable."""
    if key is None or not isinstance(credential, str):
        return None
    try:
        return key.decrypt(base64.b64decode(credential, validate=True), padding.PKCS1v15()).decode()
    except ValueError:
        return None


class FakeDaraja(FakeServer):
    def __init__(self, b2c_key: rsa.RSAPrivateKey | None = None):
        self.b2c_key = b2c_key  # decrypts SecurityCredential (make_certificate's key)
        self.b2c_requests: list[dict] = []  # every B2C request, with its "credential" read
        self.b2c: dict[str, dict] = {}  # OriginatorConversationID -> the payment taken
        self.paid: list[dict] = []  # the payments that moved money, in order
        self.float_kes = 1_000_000  # the B2C utility account
        self.b2c_refusal: tuple[int, dict] | None = None  # e.g. (400, {...}): refuse each
        # Take a B2C request, then answer too late (the client times out): outcome unknown.
        self.b2c_hangs = 0.0
        self.b2c_fails_with: str | None = None  # the next payment ends with this code
        self.status_queries: list[dict] = []
        self.token = "tok_" + secrets.token_hex(8)
        self.token_requests = 0
        self.pushes: list[dict] = []
        self.results: dict[str, tuple[str, str]] = {}  # CheckoutRequestID -> (code, desc)
        self.queries: list[str] = []
        self.query_error: tuple[int, dict] | None = None  # e.g. (429, {...}): every query fails
        # Accept a push, then answer too late (the client times out): sent, outcome unknown.
        self.push_hangs = 0.0
        self.lock = threading.Lock()
        fake = self

        class Handler(JsonHandler):
            def do_GET(self):
                expected = "Basic " + base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
                if not self.path.startswith("/oauth/v1/generate"):
                    return self._reply(404, {"errorMessage": "not found"})
                if self.headers.get("Authorization") != expected:
                    return self._reply(400, {"errorMessage": "Invalid credentials"})
                with fake.lock:
                    fake.token_requests += 1
                return self._reply(200, {"access_token": fake.token, "expires_in": "3599"})

            def do_POST(self):
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._reply(401, {"errorMessage": "Invalid Access Token"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    if self.path == "/mpesa/stkpush/v1/processrequest":
                        checkout_id = "ws_CO_" + secrets.token_hex(10)
                        fake.pushes.append({**body, "CheckoutRequestID": checkout_id})
                        if fake.push_hangs:
                            time.sleep(fake.push_hangs)
                        return self._reply(
                            200,
                            {
                                "MerchantRequestID": "mr_" + secrets.token_hex(4),
                                "CheckoutRequestID": checkout_id,
                                "ResponseCode": "0",
                                "ResponseDescription": "Success. Request accepted for processing",
                                "CustomerMessage": "Success. Request accepted for processing",
                            },
                        )
                    if self.path == "/mpesa/b2c/v3/paymentrequest":
                        return self._reply(*fake._b2c_request(body))
                    if self.path == "/mpesa/transactionstatus/v1/query":
                        return self._reply(*fake._status_query(body))
                    if self.path == "/mpesa/stkpushquery/v1/query":
                        checkout_id = body["CheckoutRequestID"]
                        fake.queries.append(checkout_id)
                        if fake.query_error:
                            return self._reply(*fake.query_error)
                        if checkout_id not in fake.results:
                            return self._reply(
                                500,
                                {
                                    "errorCode": "500.001.1001",
                                    "errorMessage": "The transaction is being processed",
                                },
                            )
                        code, desc = fake.results[checkout_id]
                        return self._reply(
                            200,
                            {
                                "ResponseCode": "0",
                                "CheckoutRequestID": checkout_id,
                                "ResultCode": code,
                                "ResultDesc": desc,
                            },
                        )
                return self._reply(404, {"errorMessage": "not found"})

        self._serve(Handler)

    # B2C ---------------------------------------------------------------------------------

    def _b2c_request(self, body: dict) -> tuple[int, dict]:
        password = decrypt_credential(self.b2c_key, body.get("SecurityCredential"))
        self.b2c_requests.append({**body, "credential": password})
        if self.b2c_refusal:
            return self.b2c_refusal
        problem = _b2c_problem(body)
        if problem:
            return problem
        if password is None:  # not encrypted with our certificate's key at all
            return 400, _error("400.002.02", "Bad Request - Invalid SecurityCredential")
        key = body["OriginatorConversationID"]
        if key in self.b2c:  # Daraja's guard against a double disbursement
            return 500, _error("500.002.1001", "Duplicate OriginatorConversationID")
        conversation_id = "AG_" + secrets.token_hex(10)
        amount = body["Amount"]
        if (body["InitiatorName"], password) != (INITIATOR, INITIATOR_PASSWORD):
            code = "2001"
        elif self.b2c_fails_with:
            code, self.b2c_fails_with = self.b2c_fails_with, None
        elif amount > self.float_kes:
            code = "1"
        else:
            code = "0"
        payment = {
            "request": body,
            "conversation_id": conversation_id,
            "code": code,
            "amount": amount,
            "receipt": "SG" + secrets.token_hex(4).upper() if code == "0" else None,
            "completed_at": datetime.datetime.now(NAIROBI),
        }
        self.b2c[key] = payment
        if code == "0":
            self.float_kes -= amount
            self.paid.append(payment)
        if self.b2c_hangs:
            time.sleep(self.b2c_hangs)
        return 200, {
            "ConversationID": conversation_id,
            "OriginatorConversationID": key,
            "ResponseCode": "0",
            "ResponseDescription": "Accept the service request successfully.",
        }

    def _status_query(self, body: dict) -> tuple[int, dict]:
        password = decrypt_credential(self.b2c_key, body.get("SecurityCredential"))
        self.status_queries.append({**body, "credential": password})
        if (body.get("Initiator"), password) != (INITIATOR, INITIATOR_PASSWORD):
            return 400, _error("400.002.02", "Bad Request - Invalid Initiator")
        if (body.get("CommandID"), body.get("PartyA"), body.get("IdentifierType")) != (
            "TransactionStatusQuery", B2C_SHORTCODE, "4"
        ):  # fmt: skip
            return 400, _error("400.002.02", "Bad Request - Invalid CommandID or PartyA")
        if not (body.get("OriginalConversationID") or body.get("TransactionID")):
            return 400, _error("400.002.02", "Bad Request - Invalid TransactionID")
        return 200, {
            "OriginatorConversationID": "st_" + secrets.token_hex(6),
            "ConversationID": "AG_" + secrets.token_hex(10),
            "ResponseCode": "0",
            "ResponseDescription": "Accept the service request successfully.",
        }

    def result_of(self, key: str) -> dict:
        """The result callback Safaricom would send for the payment taken under `key`."""
        with self.lock:
            payment = self.b2c[key]
        return b2c_result(
            key, payment["code"], conversation_id=payment["conversation_id"],
            amount=payment["amount"], receipt=payment["receipt"],
            phone=payment["request"]["PartyB"], completed_at=payment["completed_at"],
        )  # fmt: skip

    def status_result(self, query: dict) -> dict:
        """The answer to the Transaction Status `query` (one of `status_queries`)."""
        with self.lock:
            payment = self.b2c.get(query.get("OriginalConversationID")) or next(
                (p for p in self.b2c.values() if p["receipt"] == query.get("TransactionID")),
                None,
            )
        reference = {"ReferenceItem": {"Key": "Occasion", "Value": query.get("Occasion")}}
        outer = {
            "ResultType": 0,
            "OriginatorConversationID": "st_" + secrets.token_hex(6),
            "ConversationID": "AG_" + secrets.token_hex(10),
            "TransactionID": payment["receipt"] if payment else "",
            "ReferenceData": reference,
        }
        if payment is None:
            # Daraja does not document this answer; the client reads any code but 0 as
            # "not found", which says nothing of the payment.
            return {"Result": {**outer, "ResultCode": "R000002",
                               "ResultDesc": "The transaction could not be found."}}  # fmt: skip
        stamp = payment["completed_at"].strftime("%Y%m%d%H%M%S")
        parameters = {
            "DebitPartyName": f"{B2C_SHORTCODE} - Soma",
            "CreditPartyName": f"{payment['request']['PartyB']} - JANE WANJIKU",
            "OriginatorConversationID": payment["request"]["OriginatorConversationID"],
            "InitiatedTime": stamp,
            "DebitAccountType": "Utility Account",
            "DebitPartyCharges": "Fee For B2C Payment|KES|22.40",
            "TransactionReason": "",
            "ReasonType": "Business Payment to Customer via API",
            "TransactionStatus": "Completed" if payment["code"] == "0" else "Failed",
            "FinalisedTime": stamp,
            "Amount": f"{payment['amount']}.00",
            "ConversationID": payment["conversation_id"],
            "ReceiptNo": payment["receipt"] or "",
        }
        if not payment["receipt"]:
            del parameters["ReceiptNo"]
        return {"Result": {
            **outer, "ResultCode": 0, "ResultDesc": B2C_DESCRIPTIONS["0"],
            "ResultParameters": {"ResultParameter": [
                {"Key": key, "Value": value} for key, value in parameters.items()
            ]},
        }}  # fmt: skip

    def finish(self, checkout_id: str, code: str, desc: str = "") -> None:
        """How the customer answered: "0" paid, "1032" cancelled, "1037" timed out, ..."""
        with self.lock:
            self.results[checkout_id] = (
                code,
                desc or {"0": "The service request is processed successfully."}.get(code, "Failed"),
            )


def callback(
    checkout_id: str,
    code: str,
    amount: int | None = None,
    receipt: str | None = None,
    phone: str = "254712345678",
    desc: str = "",
) -> dict:
    """The body Safaricom POSTs to the callback URL."""
    body = {
        "MerchantRequestID": "mr_x",
        "CheckoutRequestID": checkout_id,
        "ResultCode": int(code),
        "ResultDesc": desc
        or (
            "The service request is processed successfully."
            if code == "0"
            else "Request cancelled by user"
        ),
    }
    if code == "0":
        body["CallbackMetadata"] = {
            "Item": [
                {"Name": "Amount", "Value": amount},
                {
                    "Name": "MpesaReceiptNumber",
                    "Value": receipt or "NLJ" + secrets.token_hex(4).upper(),
                },
                {"Name": "Balance"},
                {"Name": "TransactionDate", "Value": 20261124103000},
                {"Name": "PhoneNumber", "Value": int(phone)},
            ]
        }
    return {"Body": {"stkCallback": body}}


def _error(code: str, message: str) -> dict:
    return {"requestId": secrets.token_hex(6), "errorCode": code, "errorMessage": message}


def _b2c_problem(body: dict) -> tuple[int, dict] | None:
    """What Daraja's gateway refuses in a B2C request before taking it, if anything."""
    amount = body.get("Amount")
    checks = [
        (body.get("CommandID") == "BusinessPayment", "Invalid CommandID"),
        (body.get("PartyA") == B2C_SHORTCODE, "Invalid PartyA"),
        (isinstance(amount, int) and not isinstance(amount, bool) and amount > 0,
         "Invalid Amount"),
        (isinstance(body.get("PartyB"), str) and _MSISDN.fullmatch(body["PartyB"]),
         "Invalid PartyB"),
        (isinstance(body.get("Remarks"), str) and 2 <= len(body["Remarks"]) <= 100,
         "Invalid Remarks"),
        (bool(body.get("OriginatorConversationID")), "Invalid OriginatorConversationID"),
        (bool(body.get("ResultURL")) and bool(body.get("QueueTimeOutURL")), "Invalid URL"),
    ]  # fmt: skip
    for passed, message in checks:
        if not passed:
            return 400, _error("400.002.02", f"Bad Request - {message}")
    return None


B2C_DESCRIPTIONS = {
    "0": "The service request is processed successfully.",
    "1": "The balance is insufficient for the transaction.",
    "15": "Duplicate Detected",
    "2001": "The initiator information is invalid.",
    "2040": "Credit Party customer type (Unregistered or Registered Customer) can't be "
    "supported by the service.",
}


def b2c_result(
    key: str,
    code: str,
    conversation_id: str | None = None,
    amount: int | None = None,
    receipt: str | None = None,
    phone: str = "254712345678",
    completed_at: datetime.datetime | None = None,
    desc: str = "",
) -> dict:
    """The body Safaricom POSTs to a B2C request's ResultURL. A failure (any code but 0,
    such as 1 for our float, 2001 for the initiator, 15 for a duplicate) has no
    ResultParameters."""
    conversation_id = conversation_id or "AG_" + secrets.token_hex(10)
    result = {
        "ResultType": 0,
        "ResultCode": int(code) if code.isdigit() else code,
        "ResultDesc": desc or B2C_DESCRIPTIONS.get(code, "Failed"),
        "OriginatorConversationID": key,
        "ConversationID": conversation_id,
        "TransactionID": receipt or "NLJ" + secrets.token_hex(4).upper(),
        "ReferenceData": {
            "ReferenceItem": {"Key": "QueueTimeoutURL", "Value": "https://x/b2c/timeout"}
        },
    }
    if code == "0":
        when = completed_at or datetime.datetime.now(NAIROBI)
        result["ResultParameters"] = {"ResultParameter": [
            {"Key": "TransactionAmount", "Value": amount},
            {"Key": "TransactionReceipt", "Value": receipt or result["TransactionID"]},
            {"Key": "B2CRecipientIsRegisteredCustomer", "Value": "Y"},
            {"Key": "B2CChargesPaidAccountAvailableFunds", "Value": -4510.00},
            {"Key": "ReceiverPartyPublicName", "Value": f"{phone} - JANE WANJIKU"},
            {"Key": "TransactionCompletedDateTime",
             "Value": when.strftime("%d.%m.%Y %H:%M:%S")},
            {"Key": "B2CUtilityAccountAvailableFunds", "Value": 10116.25},
            {"Key": "B2CWorkingAccountAvailableFunds", "Value": 900000.00},
        ]}  # fmt: skip
    return {"Result": result}


def b2c_timeout(key: str, conversation_id: str | None = None) -> dict:
    """The body Safaricom POSTs to QueueTimeOutURL (undocumented: Result-shaped, as seen)."""
    return {
        "Result": {
            "ResultType": 1,
            "ResultCode": "SVC0001",
            "ResultDesc": "The request timed out in the queue.",
            "OriginatorConversationID": key,
            "ConversationID": conversation_id or "AG_" + secrets.token_hex(10),
        }
    }
