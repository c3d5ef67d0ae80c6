"""The model families `chainrule check` and `chainrule export` know: one module per family,
each registering itself with `chainrule.check.register_family` on import.

`chainrule.check.load_families()` imports every module of this package, so a family added
later (a new file here) registers itself without any edit to the commands.
"""
