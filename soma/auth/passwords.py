"""The password rule: long enough, and not among the passwords attackers try first.

The common passwords are zxcvbn's (a maintained estimator, pinned in
requirements.txt): its list of 30,000 common passwords, with the words,
names, keyboard patterns, repeats, sequences and dates it also knows, and the
user's own email and name. A password it expects to fall within a million
guesses (its score 0 or 1) is refused; every password of that list is.
"""

import re

from zxcvbn import zxcvbn

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256
# zxcvbn's score: 0 and 1 are guessed within 10^6 tries, 2 within 10^8.
MIN_SCORE = 2
# zxcvbn refuses longer input (its matching grows fast with length); the first
# 72 characters of a password decide whether it is common.
_ESTIMATED_LENGTH = 72


def password_problem(password: str, user_inputs: tuple[str, ...] = ()) -> str | None:
    """Why `password` is refused, in words for the form; None when it is fine.

    `user_inputs` are the account's own details (email, name): a password made
    of them is as weak as a common one.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Use at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"Use at most {MAX_PASSWORD_LENGTH} characters."
    words = [part for given in user_inputs if given for part in _parts(given)]
    estimate = zxcvbn(password[:_ESTIMATED_LENGTH], user_inputs=words)
    if estimate["score"] >= MIN_SCORE:
        return None
    feedback = estimate["feedback"]
    reason = feedback["warning"] or "It would be among the first passwords an attacker tries."
    hint = " ".join(feedback["suggestions"][:1]) or "Add another word or two."
    return f"This password is too easy to guess. {reason} {hint}"


def _parts(given: str) -> list[str]:
    """`given`, its pieces and its pieces run together: an email's local part and
    domain, a name's words ("ann.giver@example.com" gives "ann", "giver", "anngiver")."""
    text = given.strip().lower()
    local, _, domain = text.partition("@")
    words = [word for word in re.split(r"[\s._+-]+", local) if word]
    return [text, local, domain, *words, "".join(words)]
