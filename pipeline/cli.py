"""What every entry point's ``main`` shares: its argument parser, quiet known third-party noise, and bad input
turned into one clear line."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable

__all__ = ["parser", "run_stage"]


def parser(prog: str, doc: str, required: dict[str, str]) -> argparse.ArgumentParser:
    """The parser of the entry point ``prog`` (described by the first line of its docstring ``doc``), with the
    ``required`` arguments (``--flag`` or a positional name: help); callers add any others."""
    out = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    for name, help_ in required.items():
        out.add_argument(name, help=help_, **({"required": True} if name.startswith("-") else {}))
    return out


def run_stage(name: str, body: Callable[[], None]) -> None:
    """Run a stage body. A ``ValueError`` (bad params, failed checks) or a missing file ends the program with
    ``<name>: error: <message>`` on stderr and exit status 1; the body writes its outputs only at the end, so
    nothing half-written is left behind."""
    # Progress goes to stderr through logging, one line per event, terminal or not (tqdm bars: terminals only).
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # torch 2.14 deprecates torch.jit; timm and fvcore still use it at import time.
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=DeprecationWarning)
    try:
        body()
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"{name}: error: {exc}")
