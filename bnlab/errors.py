"""The one exception type that means "the user asked for something we cannot do",
and the one-line forms bnlab tells the user things in.

The CLI turns a BnlabError into a single line on stderr and exit code 2; anything
else that escapes is a bug (or a crashed run) and is reported differently. A
warning is one line on stderr too, so sweeps and logs stay readable.
"""

import sys


class BnlabError(Exception):
    """Bad input: unknown key, wrong type, impossible value, missing or corrupt data."""


def first_line(err: BaseException) -> str:
    """An exception as one line (its message's first line, else its type's name)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def warn(message: str) -> None:
    """One warning line on stderr (flushed: sweeps interleave several processes)."""
    print(f"bnlab: warning: {message}", file=sys.stderr, flush=True)
