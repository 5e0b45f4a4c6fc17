"""Build the optional C kernels (the rest is in pyproject.toml).

- masking's row-rewrite kernel (lockgate/masking/_rowkernel.c, needs OpenSSL headers);
- the PostgreSQL codec's framing kernel (lockgate/protocols/postgres/_framing.c);
- the SQL analyzer's literal key (lockgate/sql/_literals.c).

`optional=True`: without a C compiler (or OpenSSL headers) the install still succeeds and
the pure-Python twins are used (lockgate/masking/rowkernel.py, the `*_py` functions of
lockgate/protocols/postgres/messages.py, `literal_key_py` of lockgate/sql/literals.py).
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
        ),
        Extension(
            "lockgate.protocols.postgres._framing",
            ["src/lockgate/protocols/postgres/_framing.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "lockgate.sql._literals",
            ["src/lockgate/sql/_literals.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
