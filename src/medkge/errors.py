"""The one exception type for user mistakes.

Anything a user can get wrong (a bad file, an unknown label, an invalid config value) raises
:class:`MedkgeError` with a one-line message. The command line prints that line and exits with
status 2; it never shows a traceback for these.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable


class MedkgeError(ValueError):
    """A user-facing error: the message is one line that says what is wrong and where."""


def closest(word: str, choices: Iterable[str], n: int = 3) -> str:
    """A short ", did you mean ...?" hint for an unknown name (empty when nothing is close)."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not matches:
        return ""
    return "; closest: " + ", ".join(repr(m) for m in matches)


class MedkgeWarning(UserWarning):
    """Something the user should know that does not stop the work (the command line prints it on one line)."""


def brief(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for echoing a user's value in a one-line message
    (a 100 KB label or a nested list of millions of items must not become a huge error, nor take long)."""
    text = _SHORT.repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if isinstance(value, str) and len(value) > limit:
        text += f" ({len(value):,} characters)"
    return text


_SHORT = reprlib.Repr()  # bounded work on any value: a few levels, a few items each
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxset = 3, 8, 8, 8, 8
_SHORT.maxstring = _SHORT.maxother = 200
