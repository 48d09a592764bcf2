"""The one kind of error that means "the input is wrong", apart from every other (a bug).

Input checks (files, tables, options, environment) raise `InputError` or a subclass; the
command line reports those as one line and exit code 2. Any other exception, a
`ValueError` from deep inside a library included, is a bug: it is shown with its
traceback and exit code 1, never disguised as bad input.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a file, table, option or setting the user gave does not fit; the message says which."""
