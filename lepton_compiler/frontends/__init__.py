"""Model importers (and exporters)."""
