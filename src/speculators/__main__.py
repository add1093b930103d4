"""`python -m speculators` runs the CLI (torchrun workers use this entry)."""

from speculators.cli import main

if __name__ == "__main__":
    main()
