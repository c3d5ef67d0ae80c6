"""chainrule.reference: the specification.

Pure float64 functions, written to be read: the equation in the docstring, the
loop that mirrors it. Array code takes its namespace from its inputs
(`reference.xp.namespace`), so the same spec runs on NumPy or, on a GPU, CuPy.
"""
