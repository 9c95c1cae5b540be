"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a single line on stderr and exit code 2; anything else
that escapes is a bug (or a crashed run) and is reported differently.
"""


class BnlabError(Exception):
    """Bad input: unknown key, wrong type, impossible value, missing or corrupt data."""
