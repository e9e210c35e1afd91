"""Build hook for the one optional C extension (everything else is declared in pyproject.toml).

``hashrec.index._hamming`` is an exact Hamming top-k scan (index/_hamming.c) that the Retriever uses for
flat indexes when it is built. ``optional=True``: without a C compiler the install still succeeds and the
Retriever falls back to FAISS's IndexBinaryFlat search (same answers, slower); see index/fastscan.py.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hashrec.index._hamming",
            sources=["index/_hamming.c"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        )
    ]
)
