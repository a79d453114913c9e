"""`python -m camkit`: the `camkit` command, also as launchers start it
(`torchrun --nproc-per-node 2 -m camkit train DATA`, `accelerate launch -m camkit ...`)."""

from camkit.cli import main

main()
