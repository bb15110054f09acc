"""The framework: handler registration, dispatch, settings, errors, idempotency, contracts and the registry."""
