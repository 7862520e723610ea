"""The `connreg` command line."""
