"""The one exception type a user sees: a one-line message naming the file or field at fault."""


class InputError(ValueError):
    """Bad user input (file, field or value). The message is one line: where, what was expected, what was found."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(f"{where}: {message}")
