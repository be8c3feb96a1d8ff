"""``python -m gist_mining``: the gist-mining console script (gist_mining.cli.main)."""

from gist_mining.cli import main

main()
