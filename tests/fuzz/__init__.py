"""Fuzz tests: malformed input thrown at a real cluster over every entry point.

Run them alone with ``bin/test tests/fuzz`` (or ``-m fuzz``); for a long
run raise the number of examples per property, e.g.
``GOVERSE_FUZZ_EXAMPLES=2000 bin/test tests/fuzz``.
"""
