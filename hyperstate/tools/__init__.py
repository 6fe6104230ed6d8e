"""The tools on top of the library: the ``hyperstate`` command, format conversion, and the
schema-evolution command of a project. They call the layers below and re-implement none.
"""
