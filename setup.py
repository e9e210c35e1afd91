"""Build hook for the one C extension (everything else is declared in pyproject.toml).

``hashrec.index._scan`` (index/_scan.c) is the exact Hamming top-C scan the Retriever uses for flat
indexes. It is mandatory: an install without a C compiler and Python's headers fails here, loudly, rather
than leave a slower twin path behind (the README lists the build requirements).
"""

import platform

from setuptools import Extension, setup

# popcount is one instruction on every x86-64 CPU since 2008 (x86-64-v2); without the flag GCC calls a
# table-based helper instead. Other architectures (arm64: cnt) have it in their baseline.
POPCNT = ["-mpopcnt"] if platform.machine().lower() in ("x86_64", "amd64") else []

setup(
    ext_modules=[
        Extension(
            "hashrec.index._scan",
            sources=["index/_scan.c"],
            extra_compile_args=["-O3", "-std=c11", *POPCNT],
        )
    ]
)
