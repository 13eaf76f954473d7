"""`python -m pstyle` runs the CLI (the same as the `pstyle` console script)."""

from pstyle.cli.main import main

main()
