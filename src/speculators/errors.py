"""The one exception type for problems the user can fix (bad flags, files, data)."""


class UserInputError(ValueError):
    """A problem with the user's input. The CLI prints the message and exits with code 2.

    The message is a complete sentence or paragraph that names the flag or file at fault and
    says how to fix it; it is shown without a traceback.
    """


def describe(error: BaseException) -> str:
    """`ClassName: first line of the message`, for quoting a library's error in ours."""
    text = str(error)
    return f"{error.__class__.__name__}: {text.splitlines()[0] if text else ''}"
