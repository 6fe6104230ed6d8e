"""Schemas of config classes: type introspection, versioning and schema evolution."""
