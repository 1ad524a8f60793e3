"""Every route, every form field, bad values, every role: no 5xx, no money moved, audit clean.

The routes are read from `app.url_map`, so a new route is fuzzed without being listed
here: each of its path parameters gets bad values (ids past their column's range,
negatives, text with NUL, ...), and so does a stray query or form field. What a route
reads besides its path (its form's fields, its query arguments) is listed in `FIELDS`,
with a baseline value each; the test checks that every field of every form in soma is
listed, so a new form's fields cannot be left out. Webhooks get bodies that are signed
(Stripe) or sent to the right secret (M-Pesa), but malformed.

First a sweep: every (route, target, role) gets a bad value, and every value of
SWEEP_VALUES where the role gets in; every path of each webhook body gets every value of
SWEEP_JSON. Then hypothesis draws 500 more at random. Each request is answered below
500, except a webhook's deliberate 503 "retry later" (never the 503 of a failure). At
the end, no journal entry, posting or wallet was added or changed, and the audit is clean.

The state is built so that no *valid* input could move money either (the student has
no tokens, the only purchase is a pending sandbox one, bad ids are never real ones),
so any movement is a bug.
"""

import json
import string
from urllib.parse import quote

import pytest
from flask_wtf import FlaskForm
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from soma.admin.packages import PackageForm
from soma.admin.pricing import PricingForm
from soma.admin.users import FreezeForm, UnfreezeForm, UserSearchForm
from soma.alerts import raise_alert
from soma.audit import run_audit
from soma.auth import reset
from soma.auth.forms import (
    AccountForm,
    ForgotPasswordForm,
    LoginForm,
    PasswordChangeForm,
    ResetPasswordForm,
    SignupForm,
)
from soma.classes.forms import BookingForm, MeetingLinkForm
from soma.classes.routes import ACTIONS
from soma.extensions import db, limiter
from soma.forms import ActionForm
from soma.gifts.forms import ConfirmGiftForm, GiftForm
from soma.models import Alert, JournalEntry, Posting, Purchase, UnmatchedPayment, Wallet
from soma.notifications import service as notifications
from soma.payouts.forms import (
    AddMethodForm,
    ConfirmWithdrawalForm,
    PaidWithdrawalForm,
    RejectWithdrawalForm,
    WithdrawForm,
)
from soma.purchases import service as purchase_service
from soma.purchases.forms import BuyForm
from soma.wallet.forms import HistoryFilterForm
from tests.builders import make_class, make_funded_user, make_user, payout_method
from tests.buying import mpesa_settings
from tests.conftest import STRIPE_WEBHOOK_SECRET, AuthActions
from tests.fakes.daraja_server import (
    B2C_SHORTCODE,
    INITIATOR,
    INITIATOR_PASSWORD,
    FakeDaraja,
    b2c_result,
    callback,
    make_certificate,
)
from tests.fakes.stripe_server import event, signed
from tests.helpers import csrf_from

CALLBACK_SECRET = "cb-" + "fuzz" * 8
CONNECT_SECRET = "whsec_connect_fuzz"
ROLES = ("anonymous", "student", "teacher", "admin")
SWEEP_VALUES = ("\x00", str(2**31), str(2**63), "-1", "1e999999999", "x" * 300, "NaN")
STRAY = "stray"  # a field no route reads

# What each endpoint reads besides its path: field -> baseline value. A baseline never
# moves money on its own (the signup's passwords differ, a gift's nonce is not one its
# review issued, ...).
# "{x}" in a value is filled from the built state.
FIELDS: dict[str, dict[str, str]] = {
    "auth.signup": {"role": "student", "display_name": "Fuzz", "email": "fuzz@example.com",
                    "password": "a long enough password", "confirm": "another password",
                    "time_zone": "Asia/Tokyo"},
    "auth.account": {"time_zone": "Africa/Nairobi", "email_notifications": "y"},
    "auth.login": {"email": "nobody@example.com", "password": "wrong password", "next": "/"},
    "auth.change_password": {"current": "not the password", "password": "a long enough password",
                             "confirm": "another password"},
    # Its baseline asks for an email without an account: nothing is queued.
    "auth.forgot_password": {"email": "nobody@example.com"},
    # The token is the student's real one (fuzzed too); the baseline's passwords differ.
    "auth.reset_password": {"password": "a long enough password", "confirm": "another password"},
    "gifts.review": {"email": "{teacher_email}", "tokens": "5", "note": "hi"},
    "gifts.confirm": {"email": "{teacher_email}", "tokens": "5", "note": "hi",
                      "nonce": "fuzz-nonce-0123456789"},
    "classes.new": {"teacher": "{teacher_id}"},
    "classes.create": {"teacher": "{teacher_id}", "title": "Fuzz", "start": "2026-11-25T10:00",
                       "duration": "60", "key": "fuzz-booking-key"},
    "classes.timer": {"seen": "scheduled", "panel": "scheduled.00000000"},
    "classes.control": {},
    "classes.meeting_link": {"meeting_url": "https://meet.example.com/fuzz"},
    "purchases.start": {"package": "{package_id}", "custom_tokens": "", "provider": "sandbox",
                        "phone": "", "key": "fuzz-buy-key"},
    "purchases.show": {"session_id": "cs_x", "cancelled": "1"},
    "purchases.status": {"seen": "pending"},
    "purchases.sandbox_outcome": {},
    "wallet.transactions": {"kind": "gift", "start": "2026-01-01", "end": "2026-12-31",
                            "cursor": "5"},
    "wallet.export_csv": {"kind": "gift", "start": "2026-01-01", "end": "2026-12-31"},
    "notifications.index": {"before": "{notification_id}"},
    "notifications.mark_read": {"up_to": "{notification_id}"},
    "admin.users": {"role": "student", "before": "{teacher_id}", "q": "fuzz"},
    # Without confirmed=yes (never sent) these only show the confirmation page.
    "admin.freeze_user": {"reason": "fuzz"},
    "admin.unfreeze_user": {"reason": "fuzz"},
    "admin.purchase_list": {"before": "{purchase_id}"},
    "admin.refund": {"amount": "1.00", "key": "fuzz-refund-key"},
    "admin.match_payment": {"purchase_id": "{purchase_id}"},
    # The fuzz teacher has no tokens: a withdrawal is refused, whatever it asks for.
    "payouts.add_method": {"kind": "sandbox", "account_holder": "", "bank_name": "",
                           "account_number": "", "phone": "", "country": ""},
    "payouts.review_withdrawal": {"amount": "10", "method": "{method_id}"},
    "payouts.create_withdrawal": {"amount": "10", "method": "{method_id}",
                                  "key": "fuzz-withdrawal-key", "tokens": "25",
                                  "shillings": ""},
    "payouts.make_default": {},
    "payouts.stripe_onboarding": {},
    "payouts.stripe_refresh": {},
    "payouts.stripe_return": {},
    "payouts.remove_method": {},
    "admin.withdrawal_list": {"status": "requested", "method": "bank", "before": "5"},
    "admin.approve_withdrawal": {},
    "admin.reject_withdrawal": {"reason": "fuzz"},
    "admin.pay_withdrawal": {"reference": "fuzz"},
    "admin.audit": {"run": "5", "before": "5"},
    # Confirmed: a run starts (in the request: AUDIT_RUN_INLINE), one at a time.
    "admin.audit_start": {"confirmed": "yes"},
    "admin.audit_run_status": {"seen": "running"},
    # Never "confirmed": a baseline reaches the confirmation page and acts on nothing.
    "admin.publish": {"user_type": "student", "tokens": "10", "price": "1.20",
                      "class_tokens_per_hour": "10", "effective_at": "2030-01-01T09:00"},
    "admin.add_package": {"tokens": "100", "bonus_tokens": "5", "price": "10.00",
                          "sort_order": "0"},
    "admin.retire_package": {},
    "admin.action_log": {"admin": "{teacher_id}", "action": "refund", "object_type": "purchase",
                         "object_id": "{purchase_id}", "start": "2026-01-01", "end": "2026-12-31",
                         "before": "5"},
    "admin.alerts": {"status": "all", "rule": "refund", "part": "open", "before": "5"},
    "admin.acknowledge_alert": {"confirmed": "no"},  # (asks; "yes" would acknowledge)
}  # fmt: skip

# The forms whose fields each endpoint above reads (checked: every form in soma is here).
FORMS = {
    "auth.signup": SignupForm,
    "auth.login": LoginForm,
    "auth.change_password": PasswordChangeForm,
    "auth.account": AccountForm,
    "auth.forgot_password": ForgotPasswordForm,
    "auth.reset_password": ResetPasswordForm,
    "gifts.review": GiftForm,
    "gifts.confirm": ConfirmGiftForm,
    "classes.create": BookingForm,
    "classes.control": ActionForm,
    "classes.meeting_link": MeetingLinkForm,
    "purchases.start": BuyForm,
    "wallet.transactions": HistoryFilterForm,
    "payouts.add_method": AddMethodForm,
    "payouts.review_withdrawal": WithdrawForm,
    "payouts.create_withdrawal": ConfirmWithdrawalForm,
    "payouts.stripe_onboarding": ActionForm,
    "admin.reject_withdrawal": RejectWithdrawalForm,
    "admin.pay_withdrawal": PaidWithdrawalForm,
    "admin.users": UserSearchForm,
    "admin.freeze_user": FreezeForm,
    "admin.unfreeze_user": UnfreezeForm,
    "admin.audit_start": ActionForm,
    "admin.publish": PricingForm,
    "admin.add_package": PackageForm,
    "admin.retire_package": ActionForm,
}

# Path values that are valid and would act (a class's controls, the sandbox's buttons):
# never sent, so that a fuzzed request never does what a valid one may.
VALID_PATH_TEXT = {"name": set(ACTIONS), "outcome": {"pay", "fail"}, "secret": {CALLBACK_SECRET}}

SKIPPED = {
    "auth.logout": "takes nothing but the CSRF token, and would end the session the fuzz "
    "logs in with; its refusals (no token, a GET) are tested in test_auth",
}


# Bad values --------------------------------------------------------------------------------

CONTROL = st.text(alphabet=st.characters(max_codepoint=31), min_size=1, max_size=8)
NUMBERS = st.one_of(
    st.integers(min_value=2**31 - 1, max_value=2**31 + 2),
    st.integers(min_value=2**63 - 1, max_value=2**63 + 2),
    st.integers(min_value=2**64, max_value=10**40),
    st.integers(max_value=0, min_value=-(2**64)),
).map(str)
FIXED = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\r\n", "\t", "NaN", "sNaN", "-sNaN", "Infinity", "-inf",
     "1e999999999", "1E-999999999", "0x10", "1.5", "1,5", "\u00b2", "\u0661\u0662",
     "\uff11\uff12", "null", "[]", "{}", "true", "../../etc/passwd", "%00", "<script>",
     "' OR 1=1 --", "\u202e", "\ufeff", "\udcff".encode("utf-8", "surrogatepass").decode(
         "utf-8", "replace"), "x" * 300, "y" * 5000, "9" * 40]
)  # fmt: skip
BAD_TEXT = st.one_of(
    FIXED,
    NUMBERS,
    CONTROL,
    st.text(max_size=40),
    st.builds(lambda a, b: a + b, st.text(string.ascii_letters, max_size=5), CONTROL),
)
# A form field may come twice, or as a list: the "wrong type" a form can carry.
FORM_VALUE = st.one_of(BAD_TEXT, st.lists(BAD_TEXT, min_size=2, max_size=3))
JSON_BAD = st.one_of(
    BAD_TEXT,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([None, True, False, 0, -1, 1.5, float("nan"), float("inf"), [], {}]),
    st.lists(BAD_TEXT, max_size=2),
    st.dictionaries(st.text(max_size=5), BAD_TEXT, max_size=2),
)
DELETE = object()


# The state, the clients ----------------------------------------------------------------------


class World:
    """The rows the baselines name, one logged-in client per role, and their CSRF tokens."""

    def __init__(self, app):
        self.app = app
        with app.app_context():
            # The student has tokens for the class booked here (booking needs them); they
            # move only by what the fuzz never sends validly: a gift confirmed with its
            # review's nonce, a class started by its teacher.
            student, teacher = make_funded_user(50), make_user("teacher")
            admin = make_user("admin")
            session = make_class(student, teacher)
            chosen = purchase_service.package_quotes()[0]
            purchase = purchase_service.start(
                student, chosen, purchase_service.Provider.SANDBOX, "fuzz-pending"
            )
            notification = notifications.notify(student.id, "gift", "A note for the fuzz.")
            raise_alert("refund", "refund:fuzz", "An alert for the fuzz.", user_id=student.id)
            db.session.commit()
            alert_id = db.session.scalar(select(Alert.id))
            method = payout_method(teacher)  # the teacher has no tokens to withdraw to it
            self.values = {
                "teacher_email": teacher.email,
                "teacher_id": str(teacher.id),
                "package_id": str(chosen.package_id),
                "purchase_id": str(purchase.id),
                "notification_id": str(notification.id),
                "class_id": str(session.id),
                "method_id": str(method.id),
                "user_id": str(student.id),
                "alert_id": str(alert_id),
                "token": reset.make_token(student),
            }
            emails = {"student": student.email, "teacher": teacher.email, "admin": admin.email}
        self.clients, self.tokens = {}, {}
        for role in ROLES:
            client = app.test_client()
            if role != "anonymous":
                assert AuthActions(client).login(emails[role]).status_code == 302
            page = client.get("/login" if role == "anonymous" else "/notifications/")
            self.clients[role] = client
            self.tokens[role] = csrf_from(page.get_data(as_text=True))

    def keep_unmatched_payment(self) -> None:
        """An unmatched M-Pesa payment, kept through the webhook, for the admin's match form."""
        app = self.app
        body = callback("ws_fuzz_unknown", "0", amount=1295, receipt="NLJFUZZ001")
        answer = self.clients["anonymous"].post(f"/webhooks/mpesa/{CALLBACK_SECRET}/stk", json=body)
        assert answer.status_code == 200
        with app.app_context():
            self.values["payment_id"] = str(db.session.scalar(select(UnmatchedPayment.id)))

    def baseline(self, endpoint: str) -> dict[str, str]:
        return {
            name: value.format(**self.values) for name, value in FIELDS.get(endpoint, {}).items()
        }

    def path_value(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        return {"name": "pause", "outcome": "nothing", "secret": CALLBACK_SECRET,
                "callback": "result"}.get(name, "x")  # fmt: skip


def money(app) -> tuple:
    """Every entry, posting and wallet as it stands: what nothing here may change."""
    with app.app_context():
        return (
            db.session.execute(select(JournalEntry.id).order_by(JournalEntry.id)).all(),
            db.session.execute(select(Posting.id).order_by(Posting.id)).all(),
            db.session.execute(
                select(Wallet.id, Wallet.available, Wallet.locked, Wallet.head_seq).order_by(
                    Wallet.id
                )
            ).all(),
        )


def routes(app) -> list[tuple[str, str, object]]:
    """(endpoint, method, rule) for every route of the app, but the skipped ones."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in SKIPPED:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((rule.endpoint, method, rule))
    return found


def targets(endpoint: str, rule) -> list[str]:
    """What a case may make bad: each path parameter, each field, and a stray field."""
    if endpoint.startswith("webhooks."):
        return [f"path:{name}" for name in sorted(rule.arguments)] + ["body"]
    return [f"path:{name}" for name in sorted(rule.arguments)] + [*FIELDS.get(endpoint, {}), STRAY]


def _bad_path_text(name: str, value: str) -> bool:
    return value not in VALID_PATH_TEXT.get(name, ())


def _url(world: World, rule, endpoint: str, target: str, value) -> str:
    parts = {}
    for name in rule.arguments:
        if target == f"path:{name}":
            parts[name] = quote(value if isinstance(value, str) else str(value), safe="")
        else:
            parts[name] = quote(world.path_value(name), safe="")
    url = rule.rule
    for name, text in parts.items():
        url = _replace_argument(url, name, text)
    return url


def _replace_argument(url: str, name: str, text: str) -> str:
    start = url.index("<")
    while start != -1:
        end = url.index(">", start)
        if url[start:end].endswith(":" + name) or url[start + 1 : end] == name:
            return url[:start] + text + url[end + 1 :]
        start = url.find("<", end)
    raise AssertionError(f"no argument {name} in {url}")


def _mutated(document: dict, path: tuple, value) -> dict:
    copy = json.loads(json.dumps(document))
    node = copy
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        if isinstance(node, dict):
            node.pop(path[-1], None)
        else:
            del node[path[-1]]
    else:
        node[path[-1]] = value
    return copy


STRIPE_TEMPLATES = {
    "session": (
        "checkout.session.completed",
        {"id": "cs_fuzz", "object": "checkout.session", "payment_status": "paid",
         "amount_total": 1, "currency": "eur", "payment_intent": "pi_fuzz",
         "client_reference_id": "{purchase_id}", "metadata": {"purchase_id": "{purchase_id}"}},
        [("metadata", "purchase_id"), ("client_reference_id",), ("payment_intent",),
         ("amount_total",), ("payment_status",), ("id",), ("metadata",)],
    ),
    "refund": (
        "refund.updated",
        {"id": "re_fuzz", "object": "refund", "payment_intent": "pi_fuzz", "amount": 5,
         "status": "succeeded", "created": 1},
        [("id",), ("payment_intent",), ("amount",), ("status",), ("created",)],
    ),
    "charge": (
        "charge.refunded",
        {"id": "ch_fuzz", "object": "charge", "payment_intent": "pi_fuzz",
         "refunds": {"data": [{"id": "re_f", "amount": 5, "status": "succeeded"}]}},
        [("refunds",), ("refunds", "data"), ("refunds", "data", 0), ("refunds", "data", 0, "id"),
         ("refunds", "data", 0, "amount")],
    ),
    "dispute": (
        "charge.dispute.created",
        {"id": "dp_fuzz", "object": "dispute", "payment_intent": "pi_fuzz", "amount": 5,
         "status": "needs_response"},
        [("status",), ("amount",), ("payment_intent",)],
    ),
    "transfer": (
        "transfer.reversed",
        {"id": "tr_fuzz", "object": "transfer", "amount": 500, "amount_reversed": 500,
         "currency": "usd", "destination": "acct_fuzz", "transfer_group": "withdrawal:1",
         "reversed": True, "metadata": {"withdrawal_id": "1"}},
        [("id",), ("amount",), ("amount_reversed",), ("currency",), ("destination",),
         ("transfer_group",), ("reversed",), ("metadata",), ("metadata", "withdrawal_id")],
    ),
}  # fmt: skip
# The Connect endpoint's events (each names its connected account).
CONNECT_TEMPLATES = {
    "account": (
        "account.updated",
        {"id": "acct_fuzz", "object": "account", "payouts_enabled": True,
         "capabilities": {"transfers": "active"},
         "requirements": {"currently_due": ["individual.dob.day"], "past_due": [],
                          "disabled_reason": None}},
        [("id",), ("payouts_enabled",), ("capabilities",), ("capabilities", "transfers"),
         ("requirements",), ("requirements", "currently_due"), ("requirements", "past_due"),
         ("requirements", "currently_due", 0), ("requirements", "disabled_reason")],
    ),
    "payout": (
        "payout.failed",
        {"id": "po_fuzz", "object": "payout", "amount": 500, "currency": "usd",
         "failure_code": "account_closed", "failure_message": "closed"},
        [("id",), ("amount",), ("currency",), ("failure_code",), ("failure_message",)],
    ),
}  # fmt: skip
CONNECT_TOP = [*[("id",), ("type",), ("data",), ("data", "object")], ("account",), ("created",),
               ("livemode",)]  # fmt: skip
STRIPE_TOP = [("id",), ("type",), ("data",), ("data", "object"), ("data", "object", "id")]
MPESA_PATHS = [
    ("Body",), ("Body", "stkCallback"), ("Body", "stkCallback", "CheckoutRequestID"),
    ("Body", "stkCallback", "ResultCode"), ("Body", "stkCallback", "ResultDesc"),
    ("Body", "stkCallback", "CallbackMetadata"),
    ("Body", "stkCallback", "CallbackMetadata", "Item"),
    *[("Body", "stkCallback", "CallbackMetadata", "Item", index, "Value") for index in range(5)],
    *[("Body", "stkCallback", "CallbackMetadata", "Item", index, "Name") for index in range(5)],
]  # fmt: skip


def _stripe_body(world: World, draw) -> bytes:
    name = draw(st.sampled_from(sorted(STRIPE_TEMPLATES)))
    kind, obj, paths = STRIPE_TEMPLATES[name]
    obj = json.loads(json.dumps(obj).replace("{purchase_id}", world.values["purchase_id"]))
    document = event(kind, obj)
    if draw(st.integers(0, 9)) == 0:  # a body that is not JSON at all, rightly signed
        return draw(st.binary(max_size=64))
    path = draw(st.sampled_from([*STRIPE_TOP, *[("data", "object", *p) for p in paths]]))
    value = draw(st.one_of(JSON_BAD, st.just(DELETE)))
    return json.dumps(_mutated(document, path, value)).encode()


def _connect_body(draw) -> bytes:
    kind, obj, paths = CONNECT_TEMPLATES[draw(st.sampled_from(sorted(CONNECT_TEMPLATES)))]
    document = event(kind, obj, account="acct_fuzz")
    if draw(st.integers(0, 9)) == 0:  # a body that is not JSON at all, rightly signed
        return draw(st.binary(max_size=64))
    path = draw(st.sampled_from([*CONNECT_TOP, *[("data", "object", *p) for p in paths]]))
    value = draw(st.one_of(JSON_BAD, st.just(DELETE)))
    return json.dumps(_mutated(document, path, value)).encode()


# A B2C result (paid, with its parameters) and a failed one: every path of each.
def _b2c_documents() -> list[dict]:
    return [b2c_result("soma-withdrawal-1", "0", amount=1295, receipt="SGFUZZ01"),
            b2c_result("soma-withdrawal-1", "2040")]  # fmt: skip


def _paths(node, prefix=()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _b2c_body(draw) -> bytes:
    document = draw(st.sampled_from(_b2c_documents()))
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    path = draw(st.sampled_from(_paths(document)))
    value = draw(st.one_of(JSON_BAD, st.just(DELETE)))
    return json.dumps(_mutated(document, path, value)).encode()


def _mpesa_body(draw) -> bytes:
    code = draw(st.sampled_from(["0", "1032"]))
    document = callback("ws_fuzz_" + code, code, amount=1295, receipt="NLJFUZZ002")
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    paths = [p for p in MPESA_PATHS if code == "0" or "CallbackMetadata" not in p]
    value = draw(st.one_of(JSON_BAD, st.just(DELETE)))
    return json.dumps(_mutated(document, draw(st.sampled_from(paths)), value)).encode()


SWEEP_JSON = ("\x00", "x" * 300, "abc", "", 2**63, -1, 1.5, float("nan"), None, [], {}, DELETE)


def every_bad_body(world: World, endpoint: str):
    """Each template's every path, made each bad JSON value of SWEEP_JSON, in turn."""
    if endpoint == "webhooks.stripe_events":
        for kind, obj, paths in STRIPE_TEMPLATES.values():
            obj = json.loads(json.dumps(obj).replace("{purchase_id}", world.values["purchase_id"]))
            for path in [*STRIPE_TOP, *[("data", "object", *p) for p in paths]]:
                for value in SWEEP_JSON:
                    yield json.dumps(_mutated(event(kind, obj), path, value)).encode()
    elif endpoint == "webhooks.mpesa_b2c":
        for document in _b2c_documents():
            for path in _paths(document):
                for value in SWEEP_JSON:
                    yield json.dumps(_mutated(document, path, value)).encode()
    elif endpoint == "webhooks.stripe_connect_events":
        for kind, obj, paths in CONNECT_TEMPLATES.values():
            for path in [*CONNECT_TOP, *[("data", "object", *p) for p in paths]]:
                for value in SWEEP_JSON:
                    document = event(kind, obj, account="acct_fuzz")
                    yield json.dumps(_mutated(document, path, value)).encode()
    else:
        for code in ("0", "1032"):
            document = callback("ws_sweep_" + code, code, amount=1295, receipt="NLJSWEEP")
            for path in [p for p in MPESA_PATHS if code == "0" or "CallbackMetadata" not in p]:
                for value in SWEEP_JSON:
                    yield json.dumps(_mutated(document, path, value)).encode()


# The requests --------------------------------------------------------------------------------


def send(world: World, case, target: str, value, draw=None):
    """One request of `case` with `target` bad; returns the response."""
    endpoint, method, rule, role = case
    client = world.clients[role]
    url = _url(world, rule, endpoint, target, value)
    if endpoint == "webhooks.stripe_events":
        if target != "body":
            body = json.dumps(event("customer.created", {"id": "cus_x"})).encode()
        else:
            body = value if isinstance(value, bytes) else _stripe_body(world, draw)
        payload, header = signed(body.decode("utf-8", "replace"), STRIPE_WEBHOOK_SECRET)
        return client.post(url, data=payload, headers={"Stripe-Signature": header},
                           content_type="application/json")  # fmt: skip
    if endpoint == "webhooks.stripe_connect_events":
        if target != "body":
            body = json.dumps(event("account.application.authorized", {"id": "ca_x"},
                                    account="acct_fuzz")).encode()  # fmt: skip
        else:
            body = value if isinstance(value, bytes) else _connect_body(draw)
        payload, header = signed(body.decode("utf-8", "replace"), CONNECT_SECRET)
        return client.post(url, data=payload, headers={"Stripe-Signature": header},
                           content_type="application/json")  # fmt: skip
    if endpoint == "webhooks.mpesa_b2c":
        if target != "body":
            body = json.dumps(b2c_result("soma-withdrawal-1", "15")).encode()
        else:
            body = value if isinstance(value, bytes) else _b2c_body(draw)
        return client.post(url, data=body, content_type="application/json")
    if endpoint == "webhooks.mpesa_stk":
        if target != "body":
            body = json.dumps(callback("ws_x", "1"))
        else:
            body = value if isinstance(value, bytes) else _mpesa_body(draw)
        return client.post(url, data=body, content_type="application/json")
    fields = world.baseline(endpoint)
    if not target.startswith("path:") and target != "body":
        fields[target] = value
    if method == "GET":
        return client.get(url, query_string=fields)
    return client.post(url, data={**fields, "csrf_token": world.tokens[role]})


def reaches(response) -> bool:
    """Whether the request got past the role checks: not 401/403, not sent to log in."""
    if response.status_code in (401, 403):
        return False
    return not (response.status_code in (302, 303) and "/login" in response.location)


def check(world: World, case, target: str, value, response) -> None:
    endpoint = case[0]
    where = f"{case[1]} {case[0]} as {case[3]}, {target}={value!r:.80}"
    if response.status_code == 503 and endpoint.startswith("webhooks."):
        # Only the inbox's deliberate "retry later", never a failure of ours.
        assert b"error on our side" not in response.data, where
        return
    assert response.status_code < 500, f"{response.status_code} from {where}"


# The test ----------------------------------------------------------------------------------------


@pytest.fixture
def world(app, fake_stripe, monkeypatch, tmp_path):
    daraja = FakeDaraja().start()
    certificate, _ = make_certificate(tmp_path)
    built = World(app)  # (its pending purchase is a sandbox one: before Stripe is offered)
    app.config.update(
        STRIPE_SECRET_KEY="sk_test_soma",
        STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
        STRIPE_CONNECT_WEBHOOK_SECRET=CONNECT_SECRET,
        STRIPE_API_BASE=fake_stripe.url,
        **mpesa_settings(daraja.url, CALLBACK_SECRET),
        MPESA_CALLBACK_BASE="https://soma.example",
        MPESA_B2C_SHORTCODE=B2C_SHORTCODE,
        MPESA_B2C_INITIATOR_NAME=INITIATOR,
        MPESA_B2C_INITIATOR_PASSWORD=INITIATOR_PASSWORD,
        MPESA_B2C_CERT_PATH=str(certificate),
        AUDIT_RUN_INLINE=True,  # an audit run started here ends before the test does
    )
    # Rate limits would answer most requests 429 before their input is read.
    monkeypatch.setattr(limiter, "enabled", False)
    built.keep_unmatched_payment()
    yield built
    daraja.stop()


def every_form() -> set[type]:
    """Every FlaskForm subclass soma defines."""
    found, waiting = set(), [FlaskForm]
    while waiting:
        for form in waiting.pop().__subclasses__():
            waiting.append(form)
            if form.__module__.startswith("soma."):
                found.add(form)
    return found


def test_every_form_and_route_is_fuzzed(app):
    assert every_form() <= set(FORMS.values()), "a form is missing from FORMS"
    with app.test_request_context():
        for endpoint, form in FORMS.items():
            # their one argument: the account
            account = (None,) if form in (PasswordChangeForm, ResetPasswordForm) else ()
            read = {field.name for field in form(*account, meta={"csrf": False})} - {"csrf_token"}
            assert read <= set(FIELDS[endpoint]), f"{endpoint}: {read - set(FIELDS[endpoint])}"
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert set(FIELDS) <= endpoints and set(SKIPPED) <= endpoints


def test_bad_input_on_every_route_gets_no_5xx_and_moves_no_money(app, world):
    before = money(app)
    cases = [(*route, role) for route in routes(app) for role in ROLES]
    assert {case[0] for case in cases} >= {
        rule.endpoint for rule in app.url_map.iter_rules() if rule.arguments
    } - set(SKIPPED)

    # The sweep: every (route, target, role) gets a value from SWEEP_VALUES; the ones a
    # role gets into (not refused for its role, not sent to log in) get every value.
    reachable = [case for case in cases if reaches(send(world, case, STRAY, "x"))]
    sent = 0
    for case in cases:
        for target in targets(case[0], case[2]):
            first = sent % len(SWEEP_VALUES)
            values = SWEEP_VALUES if case in reachable else SWEEP_VALUES[first : first + 1]
            for value in values:
                if target == "body" or not _bad_path_text(target.removeprefix("path:"), value):
                    continue  # (bodies are swept below)
                check(world, case, target, value, send(world, case, target, value))
                sent += 1
    webhooks = [case for case in reachable if case[0].startswith("webhooks.")]
    for case in [case for case in webhooks if case[3] == "anonymous"]:  # (no session needed)
        for body in every_bad_body(world, case[0]):
            check(world, case, "body", body, send(world, case, "body", body))
            sent += 1
    assert sent >= 1000 and len(reachable) >= 60, (sent, len(reachable))

    # Then at random: hypothesis draws the case, the target and the value.
    @settings(
        max_examples=500,
        deadline=None,
        derandomize=True,  # the same cases on every run: CI stays stable
        database=None,
    )
    @given(data=st.data())
    def fuzz(data):
        case = data.draw(st.sampled_from(reachable), label="case")
        target = data.draw(st.sampled_from(targets(case[0], case[2])), label="target")
        if target.startswith("path:"):
            name = target[5:]
            value = data.draw(BAD_TEXT.filter(lambda text: _bad_path_text(name, text)))
        elif target == "body":
            value = None
        else:
            value = data.draw(FORM_VALUE, label="value")
        check(world, case, target, value, send(world, case, target, value, data.draw))

    fuzz()

    assert money(app) == before
    with app.app_context():
        assert run_audit() == []
        assert db.session.get(Purchase, int(world.values["purchase_id"])).status == "pending"
