"""The `sluice` command's groups, one module each; `sluice/cli.py` assembles them."""
