"""Type stub of the compiled module index/_scan.c: it exports no Python function (see index/scan.py)."""
