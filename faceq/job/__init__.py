"""The job: its plan and layout in storage, per-chunk manifests, employee ids, the Redis ledger."""
