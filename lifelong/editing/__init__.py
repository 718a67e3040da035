"""The edit engine: editor base and fit loop, session, store and its router, edit metrics, the edit benchmark.

Editor plugins live in ``lifelong.editors``; this package names none of them.
"""
