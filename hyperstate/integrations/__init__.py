"""Plugins that let other training frameworks save through hyperstate: the top layer.

:mod:`hyperstate.integrations.lightning` is a Lightning ``CheckpointIO``. Each module here
imports its framework itself, so ``import hyperstate`` (and this package) imports none of
them; install the one you use with its extra, e.g. ``pip install 'hyperstate[lightning]'``.
See docs/integrations.md.
"""
