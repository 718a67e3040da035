"""Streams and data sets; every public module here is a plugin module that registers its benchmarks."""
