"""`python -m speculators` runs the CLI; torchrun workers (started with this entry) end through
launcher.run_worker."""

from speculators.cli import main
from speculators.launcher import run_worker, under_torchrun

if __name__ == "__main__":
    if under_torchrun():
        run_worker(main)
    main()
