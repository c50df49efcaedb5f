"""Only the optional C speed-up of the relay's byte walk; everything else is in pyproject.toml.

``optional=True``: without a compiler the install still succeeds and the relay uses the
pure-Python ``wire`` functions (same results, slower; ``promptstamp-relay serve`` says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "promptstamp_relay.wire._wirec",
            ["processor/promptstamp_relay/wire/_wirec.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
