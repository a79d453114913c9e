"""`python -m camkit.cli`: the same entry point as the `camkit` command."""

from camkit.cli import main

main()
