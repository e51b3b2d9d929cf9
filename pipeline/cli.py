"""What every entry point's ``main`` shares: its argument parser, quiet known third-party noise, and bad input
turned into one clear line."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

__all__ = ["parser", "run_stage"]


def parser(module: str, doc: str, required: dict[str, str]) -> argparse.ArgumentParser:
    """The parser of ``python -m <module>`` (described by the first line of its docstring ``doc``), with the
    ``required`` options (``--flag: help``); callers add any others."""
    out = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])
    for flag, help_ in required.items():
        out.add_argument(flag, required=True, help=help_)
    return out


def run_stage(name: str, body: Callable[[], None]) -> None:
    """Run a stage body. A ``ValueError`` (bad params, failed checks) or a missing file ends the program with
    ``<name>: error: <message>`` on stderr and exit status 1; the body writes its outputs only at the end, so
    nothing half-written is left behind."""
    # torch 2.14 deprecates torch.jit; timm and fvcore still use it at import time.
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=DeprecationWarning)
    try:
        body()
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"{name}: error: {exc}")
