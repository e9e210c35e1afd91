"""Benchmark commands (``hashrec bench ...``; imported as ``hashrec.bench``)."""
