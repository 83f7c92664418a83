"""The one redaction of secrets for anything shown to a person: logs, errors, `iotmeter config`,
store descriptions and the dashboard.

A URL's password may hold characters that break URL parsing when not %-encoded (`@`, `:`,
`/`): `urlsplit` then puts part of the password in the path and a naive redaction leaves it
showing. So the password is taken as everything between the user name's `:` and the *last*
`@` of the URL (a URL seldom holds an `@` after its host; redacting too much is the safe error).
"""

from __future__ import annotations

import re
from typing import Final

MASK: Final = "***"

# scheme://user:password@ , the password running to the last '@' before a space (URLs appear
# inside error messages and log lines, quoted or not; a quote may be part of a password, so
# only whitespace ends it: at worst a little more of the same word is hidden).
_CREDENTIALS_RE: Final = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\":/@]*):\S*@"
)


def redact(text: str) -> str:
    """`text` (a URL, or a message holding URLs) with every URL's password replaced by ***."""
    if "://" not in text or "@" not in text:
        return text  # the common case, at the cost of two substring searches
    return _CREDENTIALS_RE.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
