"""Schema evolution of config classes: versions, rewrite rules, schema files and their checker."""
