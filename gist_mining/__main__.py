"""``python -m gist_mining``: the gist-mining console script (pipeline.cli.main)."""

from pipeline.cli import main

main()
