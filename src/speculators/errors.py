"""The one exception type for problems the user can fix (bad flags, files, data)."""

from __future__ import annotations


class UserInputError(ValueError):
    """A problem with the user's input. The CLI prints the message and exits with code 2.

    The message is a complete sentence or paragraph that names the flag or file at fault and
    says how to fix it; it is shown without a traceback.
    """


def describe(error: BaseException) -> str:
    """`ClassName: first line of the message`, for quoting a library's error in ours."""
    text = str(error)
    return f"{error.__class__.__name__}: {text.splitlines()[0] if text else ''}"


class WriteError(UserInputError):
    """An output that could not be written (disk full, permissions, a file where a directory
    should be): the message names the path and the system's reason."""

    def __init__(self, path: object, error: OSError) -> None:
        self.path, self.error = path, error
        reason = error.strerror or describe(error)
        super().__init__(
            f"cannot write {path}: {reason}. Free space or fix the permissions there (or choose "
            "another output location) and rerun the same command; files already written are "
            "complete and were not changed."
        )


def write_failure(path: object, error: OSError) -> WriteError:
    return WriteError(path, error)


def compile_errors() -> tuple[type[Exception], ...]:
    """What a failing torch.compile raises, at the first call of the compiled code (imported
    only when an exception is being matched: torch._dynamo takes most of a second to import)."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    return (TorchDynamoException, InductorError)


def compile_failure(error: BaseException, what: str, slower: str) -> UserInputError:
    """The message for a torch.compile that failed on `what`: the compiler's own error, and
    --no-compile as the way out."""
    cause = getattr(error, "inner_exception", None) or error.__cause__ or error
    return UserInputError(
        f"torch.compile of {what} failed ({describe(cause)}). Rerun the same command with "
        f"--no-compile (eager, {slower})."
    )
