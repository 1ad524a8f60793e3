"""A small fake of Safaricom's Daraja API: OAuth, STK push and the STK status query.

Tests decide how each push ends (`finish`) and build the callbacks Safaricom
would send (`callback`).
"""

import base64
import json
import secrets
import threading
import time

from tests.fakes import FakeServer, JsonHandler

KEY, SECRET = "consumer-key", "consumer-secret"


class FakeDaraja(FakeServer):
    def __init__(self):
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
