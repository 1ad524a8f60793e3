"""The sandbox: a stand-in provider whose checkout is a local page with Pay and Fail.

It moves no money and is never offered in production.
"""

from flask import current_app


def allowed() -> bool:
    return current_app.config["SOMA_ENV"] != "production"
