"""The OCI Distribution API: one module per resource, routed in `routes.py`."""
