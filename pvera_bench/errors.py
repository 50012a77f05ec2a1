"""The one exception type that means "the user must change something", reported in one line."""


class UserError(Exception):
    """Bad input (config, data, weights): the message says what is wrong and how to fix it."""
