"""User-facing errors.

Anything a user can get wrong (a missing file, an unknown config key, a bad row) raises
`R1labError` with a one-line message naming the file, row or key. The CLI prints it as
``error: <message>`` and exits with status 2; it never shows a traceback for these.
"""


class R1labError(Exception):
    """A mistake in the user's input: printed as one line, never as a traceback."""
