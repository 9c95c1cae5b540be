"""`python -m bnlab ...`: the CLI without an installed entry point (e.g. from a PYTHONPATH)."""

from bnlab.cli import main

main()
