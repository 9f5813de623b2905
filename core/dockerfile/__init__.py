"""The Dockerfile language, for the builder: words and variables (words.py),
the parser (parser.py, instructions.py), the stages of a multi-stage build
(stages.py) and ``.dockerignore`` (ignore.py).

Pure domain code: the standard library and core's helpers only, no I/O
beyond what a caller hands in, so each rule is unit-tested on its own.
"""
