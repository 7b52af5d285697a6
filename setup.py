"""Build hook for the optional C fast path (monitor/_native/fastdecode.c).

Everything else about the package is in pyproject.toml. The extension is
optional: without a C compiler the install still succeeds and the codec uses
its msgspec path alone (``monitor.codec.FAST_DECODE`` tells which is active).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "monitor._fastdecode",
            sources=["monitor/_native/fastdecode.c", "monitor/_native/yyjson.c"],
            include_dirs=["monitor/_native"],
            # listed so the sdist ships the header (and a changed header rebuilds)
            depends=["monitor/_native/yyjson.h"],
            define_macros=[
                # only the reader is used; no JSON extensions (comments, NaN, ...)
                ("YYJSON_DISABLE_WRITER", "1"),
                ("YYJSON_DISABLE_UTILS", "1"),
                ("YYJSON_DISABLE_NON_STANDARD", "1"),
            ],
            extra_compile_args=["-O2", "-fno-strict-aliasing"],
            optional=True,
        )
    ],
)
