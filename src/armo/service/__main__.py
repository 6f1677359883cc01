"""`python -m armo.service [--host H] [--port P]`: the same as `armo serve`."""

from armo.service.cli import main

main()
