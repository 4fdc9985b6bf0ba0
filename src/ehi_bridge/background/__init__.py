"""The background process's plumbing: its context, stage limits, executor lock, supervision."""
