"""specdenoise.cluster (see pipeline/__init__.py for the import map)."""
