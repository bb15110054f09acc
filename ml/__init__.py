"""The ML domain: contracts, validation, features, modeling, the promotion gate, the registry and model bundles."""
