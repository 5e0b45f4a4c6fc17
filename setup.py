"""Build the optional C row-rewrite kernel of masking (the rest is in pyproject.toml).

`optional=True`: without a C compiler or OpenSSL headers the install still succeeds and
masking uses the pure-Python kernel (lockgate/masking/rowkernel.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lockgate.masking._rowkernel",
            ["src/lockgate/masking/_rowkernel.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
