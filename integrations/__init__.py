"""Trainer integrations, imported as ``normwatch.integrations.<name>``."""
