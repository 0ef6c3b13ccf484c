"""`python -m scoresde_diffrax.cli ...`: the `scoresde` command (through its entry
point, `scoresde_cli`, which handles Ctrl-C and the compilation cache)."""

from scoresde_cli import console_main


console_main()
