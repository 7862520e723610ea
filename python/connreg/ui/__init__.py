"""The dashboard at /ui/: the hierarchy with each node's state, a repository browser and
recent audit events, server-rendered (templates/, static/; no build step), behind the node's
own auth (a login form and a session cookie). `install(app)` adds it to a node's app."""

from connreg.ui.views import install

__all__ = ["install"]
