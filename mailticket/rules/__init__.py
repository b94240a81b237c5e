"""The rules engine (pure): admin-written conditions and actions from the TOML file, in file order."""
