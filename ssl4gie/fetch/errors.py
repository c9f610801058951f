"""The fetch's user-facing errors: one line, exit status 2 (see ``ssl4gie.errors``)."""

from __future__ import annotations

from ssl4gie.errors import Ssl4gieError


class FetchError(Ssl4gieError):
    """A download, hash, archive or disk problem; the message names the file or URL and what to do."""
