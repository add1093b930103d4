"""The one exception type for problems the user can fix (bad flags, files, data)."""


class UserInputError(ValueError):
    """A problem with the user's input. The CLI prints the message and exits with code 2.

    The message is a complete sentence or paragraph that names the flag or file at fault and
    says how to fix it; it is shown without a traceback.
    """
