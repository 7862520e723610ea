"""Hierarchical sync: a connected registry's conversation with its parent.

- `endpoints.py` parent side: change feed (long-poll, filtered per child), config, status intake.
- `control_sync.py` which control documents travel down, and reported status up.
- `remote.py`   child side: the parent as an HTTP client (OCI API + sync endpoints).
- `puller.py`   down: apply the parent's changes; full reconciliation when the cursor expired.
- `pusher.py`   up: send the outbox (local and descendants' changes) to the parent.
- `schedule.py` cron schedule + window: when the node may talk to its parent.
- `service.py`  the loop that owns all of the above and reports status.
"""
