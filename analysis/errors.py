"""The exception types a user sees: one-line messages naming the file or field at fault."""


class InputError(ValueError):
    """Bad user input (file, field or value). The message is one line: where, what was expected, what was found."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(f"{where}: {message}")


class CacheError(OSError):
    """The cache folder cannot be used (read-only, full disk, permission): one line naming the path."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(f"{where}: {message}")
