"""Build hook for the optional C fast path (monitor/ingest/_native/fastdecode.c,
with the vendored yyjson in third_party/yyjson).

Everything else about the package is in pyproject.toml. The extension is
optional: without a C compiler the install still succeeds and the codec uses
its msgspec path alone (``monitor.ingest.fastpath.FAST_DECODE_AVAILABLE`` tells which is active).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "monitor.ingest._fastdecode",
            sources=["monitor/ingest/_native/fastdecode.c", "third_party/yyjson/yyjson.c"],
            include_dirs=["third_party/yyjson"],
            # listed so the sdist ships the header (and a changed header rebuilds)
            depends=["third_party/yyjson/yyjson.h"],
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
