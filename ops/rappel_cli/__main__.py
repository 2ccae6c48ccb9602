"""`python -m rappel_cli` is the `rappel` command."""

from rappel_cli.cli import app

app(prog_name="rappel")
