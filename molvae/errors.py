"""The one exception type for errors a user can cause.

Bad input (a missing file, an unknown SELFIES token, a misspelt config key, a corrupt
checkpoint) raises :class:`MolvaeError` with a message naming the file, row or key and how to
fix it. The CLI prints the message without a traceback; a traceback means a bug.
"""


class MolvaeError(Exception):
    """An error caused by input or configuration, with a message meant for the user."""
