"""The one exception type the project raises for bad input."""


class DsocrError(Exception):
    """Bad input (config key, file, value) with a message that names it and says what to do.

    The plugin turns it into a pytest usage error instead of a traceback.
    """
