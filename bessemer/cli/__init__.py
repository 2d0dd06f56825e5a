"""The `bessemer` command: one module per verb."""
