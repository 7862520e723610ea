"""connreg: a connected OCI registry that runs at the edge and syncs with its parent."""

__version__ = "0.1.0"
__all__ = ["__version__"]
