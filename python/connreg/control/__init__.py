"""The control plane: scope maps, tokens, connected registries and their management API.

    interfaces    ControlStore / ControlTxn protocols (named JSON documents by kind)
    sqlite_store  the embedded ControlStore (<data_dir>/control.sqlite)
    validation    the field rules of spec §1–§4, each failure one clear INVALID
    service       ControlPlane: the rules, sync scope maps and tokens, activation
    api           the /connreg/v1/ blueprint (docs/management-api.md)
    activation    a connected registry's start-up activation and its relay up the hierarchy
"""

# Only the protocols here: the implementations import connreg.auth, which imports these.
from connreg.control.interfaces import ControlStore, ControlTxn

__all__ = ["ControlStore", "ControlTxn"]
