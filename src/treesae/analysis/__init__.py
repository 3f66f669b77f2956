"""Analyses as functions of arrays: ``position``, ``matching``, ``factors``, ``hierarchy``.

Each function takes arrays / tensors / DataFrames and returns a DataFrame or a dict of plain numbers; no file
I/O. Import the module you use (``from treesae.analysis import matching``): this package imports none of them,
so a stage depends only on the analyses it calls.
"""
