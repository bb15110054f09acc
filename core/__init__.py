"""The framework: handler registration, dispatch, settings, errors, idempotency, leases and dead letters."""
