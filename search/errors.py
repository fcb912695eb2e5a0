"""The search's one error type, in a module of its own so that the CLI can catch it before (or
without) importing torch."""


class SearchError(ValueError):
    """A query or setting the search cannot take; the message is one line meant for the user."""
