"""The payout rails of the provider layer: Stripe Connect (accounts, onboarding links,
transfers, Connect events) through the real `stripe` SDK, and M-Pesa B2C through our
Daraja client, each against its fake on 127.0.0.1.

No database is needed: the calls read only the app's settings, so a bare Flask app
stands in for Soma's.
"""

import base64
import json

import pytest
import stripe
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from flask import Flask, current_app
from hypothesis import given, settings
from hypothesis import strategies as st

from soma.config import build_config
from soma.providers import daraja, stripe_connect
from soma.providers import stripe as stripe_provider
from soma.providers.inbox import Malformed
from tests.fakes.daraja_server import (
    B2C_SHORTCODE,
    INITIATOR,
    INITIATOR_PASSWORD,
    KEY,
    SECRET,
    FakeDaraja,
    b2c_result,
    b2c_timeout,
    make_certificate,
)
from tests.fakes.stripe_server import event, failed_payout, signed

CONNECT_SECRET = "whsec_connect_soma"
PLATFORM_SECRET = "whsec_platform_soma"
RESULT_URL = "https://soma.example/webhooks/mpesa/cb-secret/b2c/result"
TIMEOUT_URL = "https://soma.example/webhooks/mpesa/cb-secret/b2c/timeout"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate standing for Safaricom's, and its private key."""
    return make_certificate(tmp_path_factory.mktemp("safaricom"))


@pytest.fixture
def fake_daraja(certificate):
    fake = FakeDaraja(b2c_key=certificate[1]).start()
    yield fake
    fake.stop()


@pytest.fixture
def rails(fake_stripe, fake_daraja, certificate):
    """A bare app configured for both rails; yields (fake Stripe, fake Daraja)."""
    app = Flask(__name__)
    app.config.update(
        STRIPE_SECRET_KEY="sk_test_soma",
        STRIPE_WEBHOOK_SECRET=PLATFORM_SECRET,
        STRIPE_CONNECT_WEBHOOK_SECRET=CONNECT_SECRET,
        STRIPE_API_BASE=fake_stripe.url,
        MPESA_BASE_URL=fake_daraja.url,
        MPESA_CONSUMER_KEY=KEY,
        MPESA_CONSUMER_SECRET=SECRET,
        MPESA_SHORTCODE="174379",
        MPESA_PASSKEY="passkey",
        MPESA_CALLBACK_SECRET="cb-secret",
        MPESA_B2C_SHORTCODE=B2C_SHORTCODE,
        MPESA_B2C_INITIATOR_NAME=INITIATOR,
        MPESA_B2C_INITIATOR_PASSWORD=INITIATOR_PASSWORD,
        MPESA_B2C_CERT_PATH=str(certificate[0]),
    )
    with app.app_context():
        yield fake_stripe, fake_daraja


# Stripe Connect: accounts and onboarding -------------------------------------------------


def new_account(fake_stripe, key: str = "payout-method-1") -> str:
    return stripe_connect.create_account(
        idempotency_key=key, email="teacher@example.com", country="GB",
        metadata={"teacher_id": "7"},
    )  # fmt: skip


def test_a_connected_account_is_made_once_per_key_with_express_controller_properties(rails):
    fake_stripe, _ = rails
    first = new_account(fake_stripe)
    again = new_account(fake_stripe)
    assert first == again and first.startswith("acct_")
    assert list(fake_stripe.accounts) == [first]  # one account, whatever the repeats
    sent = [r for r in fake_stripe.requests if r["path"] == "/v1/accounts"]
    assert {r["idempotency_key"] for r in sent} == {"payout-method-1"}
    params = sent[0]["params"]
    assert "type" not in params  # deprecated: controller properties instead
    assert params["controller"] == {
        "stripe_dashboard": {"type": "express"},
        "fees": {"payer": "application"},
        "losses": {"payments": "application"},
        "requirement_collection": "stripe",
    }
    assert params["capabilities"] == {"transfers": {"requested": "true"}}
    assert (params["email"], params["country"], params["metadata"]) == (
        "teacher@example.com", "GB", {"teacher_id": "7"},
    )  # fmt: skip


def test_an_onboarding_link_carries_the_callers_urls_and_express_gets_a_dashboard_link(rails):
    fake_stripe, _ = rails
    account_id = new_account(fake_stripe)
    link = stripe_connect.onboarding_link(
        account_id,
        refresh_url="https://soma.example/payout-methods/stripe/refresh",
        return_url="https://soma.example/payout-methods/stripe/return",
    )
    (asked,) = fake_stripe.account_links
    assert asked["account"] == account_id
    assert asked["type"] == "account_onboarding"
    assert asked["refresh_url"] == "https://soma.example/payout-methods/stripe/refresh"
    assert asked["return_url"] == "https://soma.example/payout-methods/stripe/return"
    assert link.url == asked["url"] and link.expires_at > 0
    assert stripe_connect.dashboard_link(account_id).startswith(
        f"{fake_stripe.url}/express/{account_id}/"
    )


# Readiness, from account.updated ----------------------------------------------------------


def account_updated(fake_stripe, account_id: str, **changes):
    """The account.updated event of `account_id` after `changes`, through its signature."""
    payload = event("account.updated", fake_stripe.update_account(account_id, **changes),
                    account=account_id)  # fmt: skip
    body, header = signed(payload, CONNECT_SECRET)
    return stripe_connect.read_account_updated(stripe_connect.verified_connect_event(body, header))


def test_a_new_account_cannot_receive_transfers_and_lists_what_stripe_needs(rails):
    fake_stripe, _ = rails
    account_id = new_account(fake_stripe)
    readiness = account_updated(fake_stripe, account_id)
    assert readiness.account_id == account_id
    assert (readiness.transfers_active, readiness.payouts_enabled) == (False, False)
    assert not readiness.can_receive_transfers and not readiness.ready
    assert readiness.past_due and readiness.disabled_reason == "requirements.past_due"
    # Each requirement once, as a person reads it (dob.day and dob.month are one thing).
    assert readiness.requirements == (
        "Business type", "A bank account for payouts", "Date of birth", "Legal name",
        "Accept Stripe's terms of service",
    )  # fmt: skip


def test_an_account_with_transfers_active_but_payouts_disabled_is_not_ready(rails):
    fake_stripe, _ = rails
    account_id = new_account(fake_stripe)
    readiness = account_updated(
        fake_stripe, account_id, transfers="active", payouts_enabled=False,
        currently_due=["external_account"], past_due=[], disabled_reason=None,
    )  # fmt: skip
    assert readiness.can_receive_transfers and not readiness.ready
    assert readiness.requirements == ("A bank account for payouts",)
    assert not readiness.past_due and readiness.disabled_reason is None


def test_an_account_with_transfers_active_and_payouts_enabled_is_ready(rails):
    fake_stripe, _ = rails
    account_id = new_account(fake_stripe)
    readiness = account_updated(
        fake_stripe, account_id, transfers="active", payouts_enabled=True,
        currently_due=[], past_due=[], disabled_reason=None,
    )  # fmt: skip
    assert readiness.ready and readiness.requirements == ()
    assert stripe_connect.retrieve_account(account_id) == readiness  # Stripe says the same


def test_an_unknown_requirement_is_still_shown_readably():
    assert stripe_connect.requirement_label("settings.card_issuing.tos_acceptance.date") == (
        "Settings card issuing tos acceptance date"
    )
    assert stripe_connect.requirement_label("individual.verification.document") == (
        "An identity document"
    )


# The Connect webhook's signature ----------------------------------------------------------


def test_the_connect_webhook_is_verified_with_its_own_secret_and_refused_with_the_platforms(
    rails,
):
    payload = event("account.updated", {"id": "acct_1", "object": "account"}, account="acct_1")
    body, header = signed(payload, CONNECT_SECRET)
    assert stripe_connect.verified_connect_event(body, header) == payload
    with pytest.raises(stripe_provider.BadSignature):  # the platform endpoint's does not do
        stripe_provider.verified_event(body, header, "STRIPE_WEBHOOK_SECRET")
    body, header = signed(payload, PLATFORM_SECRET)
    with pytest.raises(stripe_provider.BadSignature):
        stripe_connect.verified_connect_event(body, header)
    with pytest.raises(stripe_provider.BadSignature):
        stripe_connect.verified_connect_event(body, None)
    body, header = signed("not json", CONNECT_SECRET)
    with pytest.raises(stripe_provider.Unreadable):
        stripe_connect.verified_connect_event(body, header)


def test_connect_needs_its_own_webhook_secret_to_be_offered(rails):
    assert stripe_connect.configured()
    current_app.config["STRIPE_CONNECT_WEBHOOK_SECRET"] = ""
    assert not stripe_connect.configured()  # the platform's secret alone does not do


def test_events_of_the_other_mode_can_be_told_apart(rails):
    assert stripe_connect.livemode_expected() is False  # sk_test_: live events are ignored
    envelope = stripe_connect.read_event(
        event("payout.failed", failed_payout(100), account="acct_9"), connect=True
    )
    assert (envelope.livemode, envelope.account) == (False, "acct_9")
    assert envelope.type == "payout.failed"


# Transfers ------------------------------------------------------------------------------


def ready_account(fake_stripe) -> str:
    account_id = new_account(fake_stripe)
    fake_stripe.update_account(account_id, transfers="active", payouts_enabled=True)
    return account_id


def transfer(account_id: str, key: str = "wd-41-key", amount: int = 980, withdrawal: str = "41"):
    return stripe_connect.create_transfer(
        amount_cents=amount, destination=account_id, idempotency_key=key,
        transfer_group=f"withdrawal-{withdrawal}", metadata={"withdrawal_id": withdrawal},
    )  # fmt: skip


def test_a_transfer_is_made_once_per_key_with_its_withdrawal_in_the_metadata(rails):
    fake_stripe, _ = rails
    account_id = ready_account(fake_stripe)
    before = fake_stripe.platform_available
    first, again = transfer(account_id), transfer(account_id)
    assert first == again
    assert len(fake_stripe.made_transfers) == 1  # the repeat was replayed, not made
    assert fake_stripe.platform_available == before - 980
    assert (first.amount, first.currency, first.destination) == (980, "usd", account_id)
    assert first.metadata == {"withdrawal_id": "41"}
    assert first.transfer_group == "withdrawal-41"
    assert (first.amount_reversed, first.reversed, first.kept) == (0, False, 980)
    sent = [r for r in fake_stripe.requests if r["path"] == "/v1/transfers"]
    assert {r["idempotency_key"] for r in sent} == {"wd-41-key"}
    assert stripe_connect.retrieve_transfer(first.id) == first


def test_the_same_key_with_other_parameters_is_a_key_conflict_and_moves_nothing(rails):
    fake_stripe, _ = rails
    account_id = ready_account(fake_stripe)
    made = transfer(account_id, amount=980)
    with pytest.raises(stripe_connect.KeyConflict) as conflict:
        transfer(account_id, amount=1980)
    # A conflict is an unknown outcome: the caller never releases on it.
    assert isinstance(conflict.value, stripe_connect.TransferOutcomeUnknown)
    assert fake_stripe.made_transfers == [fake_stripe.transfers[made.id]]
    assert stripe_connect.transfers_in_group("withdrawal-41") == [made]


def test_insufficient_platform_funds_make_nothing_and_a_new_attempt_pays_once(rails):
    fake_stripe, _ = rails
    account_id = ready_account(fake_stripe)
    fake_stripe.platform_available = 500
    with pytest.raises(stripe_connect.InsufficientPlatformBalance) as short:
        transfer(account_id)
    assert short.value.code == "balance_insufficient"
    assert fake_stripe.made_transfers == []
    fake_stripe.platform_available = 100_000  # topped up
    with pytest.raises(stripe_connect.InsufficientPlatformBalance):  # Stripe keeps the answer
        transfer(account_id)
    assert fake_stripe.made_transfers == []
    made = transfer(account_id, key=stripe_connect.attempt_key("wd-41-key", 2))
    assert transfer(account_id, key="wd-41-key:attempt-2") == made
    assert len(fake_stripe.made_transfers) == 1
    assert stripe_connect.transfers_in_group("withdrawal-41") == [made]


def test_a_destination_that_cannot_receive_transfers_is_refused(rails):
    fake_stripe, _ = rails
    account_id = new_account(fake_stripe)  # transfers still inactive
    with pytest.raises(stripe_connect.TransferRefused) as refused:
        transfer(account_id)
    assert refused.value.code == "insufficient_capabilities_for_transfer"
    assert fake_stripe.made_transfers == []


def test_a_lost_answer_is_an_unknown_outcome_and_the_same_key_finds_the_one_transfer(rails):
    fake_stripe, _ = rails
    account_id = ready_account(fake_stripe)
    fake_stripe.lose_transfer_answers = 1
    with pytest.raises(stripe_connect.TransferOutcomeUnknown):
        transfer(account_id)
    (made,) = fake_stripe.made_transfers  # it was made, though nobody heard
    (found,) = stripe_connect.transfers_in_group("withdrawal-41")  # asking finds it
    assert found.id == made["id"]
    assert transfer(account_id).id == made["id"]  # the same key returns it, pays nothing more
    assert len(fake_stripe.made_transfers) == 1
    assert stripe_connect.retrieve_transfer(made["id"]).amount == 980


@pytest.mark.parametrize(
    ("error", "meaning"),
    [
        (stripe.APIConnectionError("connection reset"), stripe_connect.TransferOutcomeUnknown),
        (stripe.APIError("bad gateway", http_status=502), stripe_connect.TransferOutcomeUnknown),
        (stripe.InvalidRequestError("in use", None, http_status=409),
         stripe_connect.TransferOutcomeUnknown),
        (stripe.IdempotencyError("other params", http_status=400), stripe_connect.KeyConflict),
        (stripe.InvalidRequestError("no money", None, code="balance_insufficient",
                                    http_status=400),
         stripe_connect.InsufficientPlatformBalance),
        (stripe.RateLimitError("slow down", http_status=429), stripe_connect.TransferNotMade),
        (stripe.AuthenticationError("bad key", http_status=401), stripe_connect.TransferNotMade),
        (stripe.InvalidRequestError("no such destination", "destination", http_status=400),
         stripe_connect.TransferRefused),
    ],
)  # fmt: skip
def test_each_stripe_error_means_one_thing_for_the_money(error, meaning):
    assert type(stripe_connect.classify(error)) is meaning


def test_a_transfers_amount_is_whole_positive_cents():
    for amount in (0, -5, 9.8, True, "980"):
        with pytest.raises(ValueError):
            transfer("acct_x", amount=amount)


# Transfer and payout events -----------------------------------------------------------------


def test_a_reversed_transfer_is_read_with_what_was_taken_back(rails):
    fake_stripe, _ = rails
    made = transfer(ready_account(fake_stripe))
    partly = stripe_connect.read_transfer_event(
        event("transfer.updated", fake_stripe.reverse_transfer(made.id, 300))
    )
    assert (partly.amount_reversed, partly.reversed, partly.kept) == (300, False, 680)
    fully = stripe_connect.read_transfer_event(
        event("transfer.reversed", fake_stripe.reverse_transfer(made.id))
    )
    assert (fully.id, fully.amount_reversed, fully.reversed, fully.kept) == (made.id, 980, True, 0)
    assert fully.metadata == {"withdrawal_id": "41"}


def test_a_failed_payout_names_its_connected_account_and_why(rails):
    failure = stripe_connect.read_payout_failed(
        event("payout.failed", failed_payout(980, "account_closed", "The bank account\x00 closed"),
              account="acct_teacher")
    )  # fmt: skip
    assert (failure.account_id, failure.amount, failure.currency) == ("acct_teacher", 980, "usd")
    assert failure.payout_id.startswith("po_")
    assert (failure.failure_code, failure.failure_message) == (
        "account_closed", "The bank account closed",
    )  # fmt: skip


def account_event(**changes) -> dict:
    account = {
        "id": "acct_1",
        "object": "account",
        "capabilities": {"transfers": "active"},
        "payouts_enabled": True,
        "requirements": {"currently_due": [], "past_due": []},
    }
    account.update(changes)
    return event("account.updated", account, account="acct_1")  # fmt: skip


def without(payload: dict, name: str) -> dict:
    return {key: value for key, value in payload.items() if key != name}


OTHER_ACCOUNT = {**account_event(), "account": "acct_2"}
OBJECT_TEXT = {**account_event(), "data": {"object": "x"}}
MALFORMED_CONNECT = [
    ("not an object", stripe_connect.read_account_updated, []),
    ("no id", stripe_connect.read_account_updated, without(account_event(), "id")),
    ("no account", stripe_connect.read_account_updated, without(account_event(), "account")),
    ("other account", stripe_connect.read_account_updated, OTHER_ACCOUNT),
    ("no data", stripe_connect.read_account_updated, without(account_event(), "data")),
    ("object text", stripe_connect.read_account_updated, OBJECT_TEXT),
    ("no created", stripe_connect.read_account_updated, {**account_event(), "created": "now"}),
    ("no livemode", stripe_connect.read_account_updated, without(account_event(), "livemode")),
    ("capabilities text", stripe_connect.read_account_updated, account_event(capabilities="all")),
    ("transfers yes", stripe_connect.read_account_updated,
     account_event(capabilities={"transfers": "yes"})),
    ("payouts text", stripe_connect.read_account_updated, account_event(payouts_enabled="true")),
    ("requirements list", stripe_connect.read_account_updated, account_event(requirements=[])),
    ("due not a list", stripe_connect.read_account_updated,
     account_event(requirements={"currently_due": "external_account"})),
    ("due not text", stripe_connect.read_account_updated,
     account_event(requirements={"past_due": [7]})),
    ("reason with NUL", stripe_connect.read_account_updated,
     account_event(requirements={"disabled_reason": "listed\x00"})),
    ("transfer amount text", stripe_connect.read_transfer_event,
     event("transfer.reversed", {"id": "tr_1", "amount": "980", "currency": "usd",
                                 "destination": "acct_1"})),
    ("reversed above amount", stripe_connect.read_transfer_event,
     event("transfer.reversed", {"id": "tr_1", "amount": 980, "amount_reversed": 981,
                                 "currency": "usd", "destination": "acct_1"})),
    ("no destination", stripe_connect.read_transfer_event,
     event("transfer.reversed", {"id": "tr_1", "amount": 980, "currency": "usd"})),
    ("metadata not text", stripe_connect.read_transfer_event,
     event("transfer.reversed", {"id": "tr_1", "amount": 980, "currency": "usd",
                                 "destination": "acct_1", "metadata": {"withdrawal_id": 41}})),
    ("not a transfer id", stripe_connect.read_transfer_event,
     event("transfer.reversed", {"id": "po_1", "amount": 980, "currency": "usd",
                                 "destination": "acct_1"})),
    ("payout without account", stripe_connect.read_payout_failed,
     event("payout.failed", failed_payout(980))),
    ("payout amount bool", stripe_connect.read_payout_failed,
     event("payout.failed", {**failed_payout(980), "amount": True}, account="acct_1")),
    ("payout code list", stripe_connect.read_payout_failed,
     event("payout.failed", {**failed_payout(980), "failure_code": ["x"]}, account="acct_1")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reader", "payload"), [case[1:] for case in MALFORMED_CONNECT],
    ids=[case[0] for case in MALFORMED_CONNECT],
)  # fmt: skip
def test_an_unreadable_connect_or_transfer_event_is_malformed_never_a_crash(reader, payload):
    with pytest.raises(Malformed):
        reader(json.loads(json.dumps(payload)))


# M-Pesa B2C: the request and its credential ---------------------------------------------------


def pay(key: str = "wd-52-key", phone: str = "0712 345 678", amount: int = 1295):
    return daraja.client().b2c_payment(
        originator_conversation_id=key, phone=phone, amount_kes=amount,
        remarks="Soma withdrawal 52", occasion="Withdrawal 52",
        result_url=RESULT_URL, timeout_url=TIMEOUT_URL,
    )  # fmt: skip


def test_the_security_credential_decrypts_to_the_password_with_the_private_key(certificate):
    path, key = certificate
    pem = path.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    for encoded in (pem, der):
        credential = daraja.security_credential(INITIATOR_PASSWORD, encoded)
        assert INITIATOR_PASSWORD not in credential
        plain = key.decrypt(base64.b64decode(credential), padding.PKCS1v15())
        assert plain.decode() == INITIATOR_PASSWORD
    # PKCS#1 v1.5 pads at random: the same password never encrypts the same way twice.
    assert daraja.security_credential("x", pem) != daraja.security_credential("x", pem)


def test_a_b2c_payment_is_sent_as_daraja_v3_asks_and_pays_once(rails):
    _, fake = rails
    accepted = pay()
    (sent,) = fake.b2c_requests
    assert sent["credential"] == INITIATOR_PASSWORD  # the fake decrypted it
    assert sent["SecurityCredential"] != INITIATOR_PASSWORD
    assert sent["OriginatorConversationID"] == "wd-52-key"
    assert sent["InitiatorName"] == INITIATOR
    assert sent["CommandID"] == "BusinessPayment"
    assert (sent["Amount"], sent["PartyA"], sent["PartyB"]) == (1295, B2C_SHORTCODE, "254712345678")
    assert (sent["Remarks"], sent["Occassion"]) == ("Soma withdrawal 52", "Withdrawal 52")
    assert (sent["ResultURL"], sent["QueueTimeOutURL"]) == (RESULT_URL, TIMEOUT_URL)
    assert accepted.originator_conversation_id == "wd-52-key"
    assert accepted.conversation_id == fake.b2c["wd-52-key"]["conversation_id"]
    assert [payment["amount"] for payment in fake.paid] == [1295]


def test_a_repeated_b2c_request_is_refused_as_a_duplicate_and_pays_once(rails):
    _, fake = rails
    pay()
    with pytest.raises(daraja.DuplicateRequest) as duplicate:
        pay()
    assert isinstance(duplicate.value, daraja.OutcomeUnknown)  # never "failed"
    assert duplicate.value.code == "500.002.1001"
    assert len(fake.b2c_requests) == 2 and len(fake.paid) == 1


def test_a_time_out_after_sending_is_unknown_and_the_retry_with_the_same_key_pays_once(
    rails, monkeypatch
):
    _, fake = rails
    monkeypatch.setattr("soma.providers.daraja.TIMEOUT", 0.3)
    fake.b2c_hangs = 0.8  # Daraja takes it, but its answer comes too late
    with pytest.raises(daraja.OutcomeUnknown) as unknown:
        pay()
    assert not isinstance(unknown.value, daraja.DuplicateRequest)
    with fake.lock:  # (the fake's late answer is done)
        fake.b2c_hangs = 0.0
    with pytest.raises(daraja.DuplicateRequest):  # the retry, with the SAME key
        pay()
    assert len(fake.paid) == 1
    # The unknown is resolved by asking.
    daraja.client().transaction_status(
        originator_conversation_id="wd-52-key", result_url=RESULT_URL + "/status",
        timeout_url=TIMEOUT_URL + "/status",
    )  # fmt: skip
    (query,) = fake.status_queries
    assert query["credential"] == INITIATOR_PASSWORD
    assert (query["OriginalConversationID"], query["Occasion"]) == ("wd-52-key", "wd-52-key")
    assert "TransactionID" not in query
    status = daraja.read_status_result(fake.status_result(query))
    assert status.completed and status.payment_key == "wd-52-key"
    assert (status.receipt, status.amount_kes) == (fake.paid[0]["receipt"], 1295)
    assert status.finalised_at is not None and status.finalised_at.utcoffset().total_seconds() == 0


def test_a_status_query_for_an_unknown_payment_says_nothing_was_found(rails):
    _, fake = rails
    daraja.client().transaction_status(
        originator_conversation_id="never-sent", result_url=RESULT_URL, timeout_url=TIMEOUT_URL
    )
    status = daraja.read_status_result(fake.status_result(fake.status_queries[0]))
    assert not status.completed and status.code != "0"
    assert status.asked_about == "never-sent"


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [(400, "400.002.02", False), (401, "404.001.04", True), (429, "500.003.03", True)],
)
def test_a_refused_b2c_request_pays_nothing_and_says_whether_to_try_later(
    rails, status, code, retryable
):
    _, fake = rails
    fake.b2c_refusal = (status, {"requestId": "r1", "errorCode": code, "errorMessage": "No"})
    with pytest.raises(daraja.Refused) as refused:
        pay()
    assert (refused.value.code, refused.value.status) == (code, status)
    assert refused.value.retryable is retryable
    assert fake.paid == []


def test_a_refused_token_is_fetched_anew_for_the_next_request(rails):
    _, fake = rails
    fake.b2c_refusal = (401, {"requestId": "r1", "errorCode": "404.001.04",
                              "errorMessage": "Invalid Access Token"})  # fmt: skip
    with pytest.raises(daraja.Refused):
        pay()
    fake.b2c_refusal = None
    assert pay().originator_conversation_id == "wd-52-key"
    assert fake.token_requests == 2 and len(fake.paid) == 1


@pytest.mark.parametrize(
    ("answer", "meaning"),
    [({}, daraja.OutcomeUnknown),  # a 200 nobody can read: it may have been taken
     ({"ResponseCode": "0"}, daraja.OutcomeUnknown),  # taken, but which conversation?
     ({"ResponseCode": "0", "ConversationID": "AG_1", "OriginatorConversationID": "other"},
      daraja.OutcomeUnknown),
     ({"ResponseCode": "1", "ResponseDescription": "Rejected"}, daraja.Refused)],
)  # fmt: skip
def test_an_answer_with_status_200_is_read_before_it_is_believed(rails, answer, meaning):
    _, fake = rails
    fake.b2c_refusal = (200, answer)
    with pytest.raises(meaning) as raised:
        pay()
    assert type(raised.value) is meaning


def test_a_b2c_request_that_never_left_is_not_sent(certificate):
    app = Flask(__name__)
    app.config.update(
        MPESA_BASE_URL="http://127.0.0.1:9", MPESA_CONSUMER_KEY=KEY, MPESA_CONSUMER_SECRET=SECRET,
        MPESA_SHORTCODE="", MPESA_PASSKEY="", MPESA_CALLBACK_SECRET="cb",
        MPESA_B2C_SHORTCODE=B2C_SHORTCODE, MPESA_B2C_INITIATOR_NAME=INITIATOR,
        MPESA_B2C_INITIATOR_PASSWORD=INITIATOR_PASSWORD, MPESA_B2C_CERT_PATH=str(certificate[0]),
    )  # fmt: skip
    with app.app_context(), pytest.raises(daraja.NotSent):
        pay()


def test_an_unreadable_certificate_sends_nothing(rails, tmp_path):
    _, fake = rails
    bad = tmp_path / "broken.cer"
    bad.write_bytes(b"not a certificate")
    daraja.client().initiator = daraja.B2CInitiator(INITIATOR, INITIATOR_PASSWORD, str(bad),
                                                    B2C_SHORTCODE)  # fmt: skip
    with pytest.raises(daraja.NotSent):
        pay()
    assert fake.b2c_requests == []


@pytest.mark.parametrize(
    "arguments",
    [{"amount": 12.5}, {"amount": 0}, {"amount": True}, {"key": "has space"}, {"key": ""},
     {"key": "k" * 65}],
)  # fmt: skip
def test_arguments_daraja_would_refuse_are_refused_before_sending(rails, arguments):
    _, fake = rails
    with pytest.raises(ValueError):
        pay(**arguments)
    with pytest.raises(daraja.InvalidPhone):
        pay(phone="+1 415 555 0100")
    assert fake.b2c_requests == []


# B2C callbacks --------------------------------------------------------------------------------


def test_a_paid_result_is_read_with_its_receipt_amount_and_recipient(rails):
    _, fake = rails
    pay()
    result = daraja.read_b2c_result(fake.result_of("wd-52-key"))
    assert result.paid and not result.failed and not result.duplicate
    assert result.originator_conversation_id == "wd-52-key"
    assert result.conversation_id == fake.b2c["wd-52-key"]["conversation_id"]
    assert (result.amount_kes, result.receipt) == (1295, fake.paid[0]["receipt"])
    assert result.receiver == "254712345678 - JANE WANJIKU"
    assert result.completed_at is not None and result.completed_at.utcoffset().total_seconds() == 0
    assert result.utility_funds_cents == 1_011_625
    again = daraja.read_b2c_result(fake.result_of("wd-52-key"))
    assert again.event_id == result.event_id  # a repeated callback is the same event


def test_a_wrong_initiator_password_is_taken_then_fails_with_2001_and_pays_nothing(rails):
    _, fake = rails
    daraja.client().initiator = daraja.B2CInitiator(
        INITIATOR, "wrong-password", daraja.client().initiator.certificate_path, B2C_SHORTCODE
    )
    pay()
    result = daraja.read_b2c_result(fake.result_of("wd-52-key"))
    assert (result.code, result.failed, result.platform_side) == ("2001", True, True)
    assert result.amount_kes is None and result.receipt is None
    assert fake.paid == []


@pytest.mark.parametrize(
    ("code", "failed", "platform_side", "message"),
    [
        ("1", True, True, "M-Pesa could not send the payment from our side."),
        ("2001", True, True, "M-Pesa could not send the payment from our side."),
        ("2040", True, False, "The number is not registered for M-Pesa."),
        ("SFC_IC0003", True, False, "The number is not an M-Pesa number."),
        ("15", False, False, None),  # a duplicate's answer says nothing about the first
    ],
)
def test_failure_results_say_whose_problem_it_is(code, failed, platform_side, message):
    result = daraja.read_b2c_result(b2c_result("wd-52-key", code))
    assert not result.paid
    assert (result.failed, result.platform_side) == (failed, platform_side)
    if message:
        assert result.message().startswith(message)


def test_a_float_too_low_fails_the_payment_with_code_1(rails):
    _, fake = rails
    fake.float_kes = 1000
    pay(amount=1295)
    result = daraja.read_b2c_result(fake.result_of("wd-52-key"))
    assert result.code == daraja.B2C_INSUFFICIENT_FLOAT and result.failed
    assert fake.paid == []


def test_a_time_out_callback_is_read_as_unknown():
    timeout = daraja.read_b2c_timeout(b2c_timeout("wd-52-key", "AG_1"))
    assert (timeout.originator_conversation_id, timeout.conversation_id) == ("wd-52-key", "AG_1")
    assert timeout.event_id == "b2c-timeout:wd-52-key:AG_1"
    flat = daraja.read_b2c_timeout({"OriginatorConversationID": "wd-52-key"})
    assert flat.originator_conversation_id == "wd-52-key"


def paid(**changes) -> dict:
    body = b2c_result("wd-52-key", "0", conversation_id="AG_1", amount=1295, receipt="SG1")
    body["Result"].update(changes)
    return body


def paid_with(name: str, value) -> dict:
    body = paid()
    for item in body["Result"]["ResultParameters"]["ResultParameter"]:
        if item["Key"] == name:
            item["Value"] = value
    return body


MALFORMED_B2C = [
    ("not an object", daraja.read_b2c_result, "text"),
    ("no Result", daraja.read_b2c_result, {"Body": {}}),
    ("Result a list", daraja.read_b2c_result, {"Result": []}),
    ("no ResultCode", daraja.read_b2c_result, paid(ResultCode=None)),
    ("ResultCode bool", daraja.read_b2c_result, paid(ResultCode=True)),
    ("ResultCode negative", daraja.read_b2c_result, paid(ResultCode=-1)),
    ("ResultCode with NUL", daraja.read_b2c_result, paid(ResultCode="0\x00")),
    ("no key", daraja.read_b2c_result, paid(OriginatorConversationID=None)),
    ("key a number", daraja.read_b2c_result, paid(OriginatorConversationID=52)),
    ("key too long", daraja.read_b2c_result, paid(OriginatorConversationID="k" * 65)),
    ("key with space", daraja.read_b2c_result, paid(OriginatorConversationID="wd 52")),
    ("ConversationID a dict", daraja.read_b2c_result, paid(ConversationID={})),
    ("desc with NUL", daraja.read_b2c_result, paid(ResultDesc="ok\x00")),
    ("desc a number", daraja.read_b2c_result, paid(ResultDesc=5)),
    ("parameters a list", daraja.read_b2c_result, paid(ResultParameters=[])),
    ("parameter unnamed", daraja.read_b2c_result,
     paid(ResultParameters={"ResultParameter": [{"Value": 1}]})),
    ("paid without parameters", daraja.read_b2c_result, paid(ResultParameters=None)),
    ("amount a fraction", daraja.read_b2c_result, paid_with("TransactionAmount", 12.5)),
    ("amount zero", daraja.read_b2c_result, paid_with("TransactionAmount", 0)),
    ("amount NaN", daraja.read_b2c_result, paid_with("TransactionAmount", "NaN")),
    ("amount text", daraja.read_b2c_result, paid_with("TransactionAmount", "lots")),
    ("receipt a list", daraja.read_b2c_result, paid_with("TransactionReceipt", ["SG1"])),
    ("timeout without key", daraja.read_b2c_timeout, {"Result": {"ConversationID": "AG_1"}}),
    ("timeout a list", daraja.read_b2c_timeout, [1]),
    ("status without Result", daraja.read_status_result, {}),
    ("status receipt number", daraja.read_status_result,
     {"Result": {"ResultCode": 0, "ResultParameters": {"ResultParameter": [
         {"Key": "ReceiptNo", "Value": 7}]}}}),
    ("status amount fraction", daraja.read_status_result,
     {"Result": {"ResultCode": 0, "ResultParameters": {"ResultParameter": [
         {"Key": "Amount", "Value": "10.50"}]}}}),
    ("status reference a list of text", daraja.read_status_result,
     {"Result": {"ResultCode": 0, "ReferenceData": {"ReferenceItem": ["x"]}}}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reader", "body"),
    [case[1:] for case in MALFORMED_B2C],
    ids=[case[0] for case in MALFORMED_B2C],
)
def test_an_unreadable_b2c_callback_is_malformed_with_a_reason_never_a_crash(reader, body):
    with pytest.raises(Malformed) as malformed:
        reader(json.loads(json.dumps(body)) if body != "text" else body)
    assert str(malformed.value)


def test_a_failure_result_needs_no_parameters_and_a_paid_one_reads_a_single_parameter():
    failed = daraja.read_b2c_result(b2c_result("wd-52-key", "2001"))
    assert failed.failed and failed.transaction_id is not None
    single = paid(ResultParameters={"ResultParameter": {"Key": "X", "Value": 1}})
    with pytest.raises(Malformed):  # read (one item, not a list), but paid without an amount
        daraja.read_b2c_result(single)


# Any body at all: read, or Malformed ------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def paths(value, trail=()):
    """Every place in a JSON value, as a tuple of keys and indexes."""
    yield trail
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*trail, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, (*trail, index))


def replaced(value, trail, new):
    if not trail:
        return new
    copy = json.loads(json.dumps(value))
    node = copy
    for step in trail[:-1]:
        node = node[step]
    node[trail[-1]] = new
    return copy


VALID_BODIES = [
    (daraja.read_b2c_result, b2c_result("wd-1", "0", "AG_1", amount=10, receipt="SG1")),
    (daraja.read_b2c_timeout, b2c_timeout("wd-1", "AG_1")),
    (daraja.read_status_result, {"Result": {
        "ResultCode": 0, "ConversationID": "AG_1",
        "ResultParameters": {"ResultParameter": [{"Key": "Amount", "Value": "10.00"},
                                                 {"Key": "ReceiptNo", "Value": "SG1"}]},
        "ReferenceData": {"ReferenceItem": {"Key": "Occasion", "Value": "wd-1"}}}}),
    (stripe_connect.read_account_updated, account_event()),
    (stripe_connect.read_transfer_event, event("transfer.reversed", {
        "id": "tr_1", "amount": 980, "amount_reversed": 980, "currency": "usd",
        "destination": "acct_1", "reversed": True, "metadata": {"withdrawal_id": "41"}})),
    (stripe_connect.read_payout_failed, event("payout.failed", failed_payout(980),
                                              account="acct_1")),
]  # fmt: skip


READS = {
    daraja.read_b2c_result: daraja.B2CResult,
    daraja.read_b2c_timeout: daraja.B2CTimeout,
    daraja.read_status_result: daraja.StatusResult,
    stripe_connect.read_account_updated: stripe_connect.ConnectReadiness,
    stripe_connect.read_transfer_event: stripe_connect.Transfer,
    stripe_connect.read_payout_failed: stripe_connect.PayoutFailure,
}


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_change_to_a_valid_body_is_read_or_malformed_never_a_crash(data):
    reader, body = data.draw(st.sampled_from(VALID_BODIES))
    trail = data.draw(st.sampled_from(list(paths(body))))
    try:
        read = reader(replaced(body, trail, data.draw(JSON)))
    except Malformed as malformed:
        assert str(malformed)  # refused with a reason
    else:
        assert isinstance(read, READS[reader])  # or read whole, as what it is


def test_the_b2c_settings_are_read_from_the_environment_and_all_are_needed(tmp_path):
    settings = {"SOMA_ENV": "testing", "SECRET_KEY": "k", "MPESA_B2C_SHORTCODE": "600996",
                "MPESA_B2C_INITIATOR_NAME": "api-op", "MPESA_B2C_INITIATOR_PASSWORD": "pw",
                "MPESA_B2C_CERT_PATH": "/etc/soma/safaricom.cer",
                "STRIPE_CONNECT_WEBHOOK_SECRET": "whsec_c"}  # fmt: skip
    config = build_config(settings, str(tmp_path))
    assert {name: config[name] for name in settings if name.startswith(("MPESA", "STRIPE"))} == {
        name: value for name, value in settings.items() if name.startswith(("MPESA", "STRIPE"))
    }
    app = Flask(__name__)
    app.config.update(config, MPESA_CONSUMER_KEY="k", MPESA_CONSUMER_SECRET="s")
    with app.app_context():
        assert not daraja.b2c_configured()  # no callback secret: no result URL to give
        app.config["MPESA_CALLBACK_SECRET"] = "cb"
        assert daraja.b2c_configured()
        assert daraja.client().initiator == daraja.B2CInitiator(
            "api-op", "pw", "/etc/soma/safaricom.cer", "600996"
        )
