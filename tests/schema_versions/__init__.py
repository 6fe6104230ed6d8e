"""Four versions of one config class, as a user's ``config.py`` evolves.

Each module defines ``Config`` (and its parts) under the same names, the way the class
looks at that version; the tests load files written by older versions with newer ones.
"""
