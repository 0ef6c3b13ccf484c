"""`python -m scoresde_diffrax.cli ...`: the `scoresde` command."""

from . import console_main


console_main()
