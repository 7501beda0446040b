"""The one exception type the user sees.

A `SpeechmergeError` carries a single line that says which file, which tensor, what was
expected and what to do. The CLI prints it without a traceback (unless --debug) and exits
with status 2. Anything else escaping is a bug in speechmerge.
"""


class SpeechmergeError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2
