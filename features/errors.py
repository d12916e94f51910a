"""The error type for problems a user can fix.

The CLI shows a :class:`UserError` (and the subclasses every layer raises: store, dataset, cluster, weights and
run errors) as one clear line, while any other exception is a bug and keeps its traceback. It lives in
``features`` because every stage imports this layer and it imports none of them.
"""
from __future__ import annotations


class UserError(ValueError):
    """A bad option, input file or environment, with a message that says what went wrong and what to do.

    A ``ValueError`` too, so code that catches bad values keeps working."""
