"""Plain functions behind each CLI command (each returns its metrics)."""
