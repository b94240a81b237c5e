"""The rules engine: admin-written conditions and actions from the TOML file."""
