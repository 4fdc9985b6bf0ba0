"""Follow-up work written in the transaction that caused it, started after the commit."""
