"""The one compiled part of recsys: recsys._scan (the int8 first pass of exact single-query search). It is
optional: where it cannot be built (no C compiler), pip installs recsys without it and the engine scores
every query in float32 with numpy (recsys/retrieval/int8.py)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("recsys._scan", ["recsys/_scan.c"], optional=True, extra_compile_args=["-O3"])])
