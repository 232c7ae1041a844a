"""Password strength, one rule for admin and SIP passwords: zxcvbn's estimate.

zxcvbn (Dropbox's estimator) knows what guessers try first: dictionary words, names,
keyboard walks, dates, l33t substitutions and a word with digits appended
(``password1234``). A length rule alone lets those through; an attacker spreading
guesses over many addresses tries exactly them.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_ZXCVBN_SCORE = 3  # 0-4; 3: "safely unguessable", about 10^8 guesses or more


def weakness(password: str, user_inputs: Sequence[str]) -> str | None:
    """Why ``password`` is too weak, in words for the user; None when it is strong enough.

    ``user_inputs``: words an attacker knows (user name, extension number, product)."""
    from zxcvbn import zxcvbn  # type: ignore[import-untyped]  # slow import: only when used

    result = zxcvbn(password[:100], user_inputs=list(user_inputs))
    score = int(result["score"])
    if score >= MIN_ZXCVBN_SCORE:
        return None
    feedback = result.get("feedback") or {}
    hints = [str(feedback.get("warning") or "").strip()]
    hints += [str(s).strip() for s in feedback.get("suggestions") or []]
    why = "; ".join(h.rstrip(".") for h in hints if h) or "it is easy to guess"
    return f"password too weak (strength {score}/4, need {MIN_ZXCVBN_SCORE}): {why}"
