"""A small Lightning training job, and what tests/test_lightning.py shares with it."""
