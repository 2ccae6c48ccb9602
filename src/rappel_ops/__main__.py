"""`python -m rappel_ops` is the `rappel` command."""

from rappel_ops.cli import app

app(prog_name="rappel")
