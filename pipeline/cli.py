"""What every entry point's ``main`` shares: its argument parser (the training stages': their common arguments),
quiet known third-party noise, and bad input turned into one clear line.

An entry point parses its arguments before it imports torch, timm, dvc, pandas or matplotlib (their imports live in
the functions that use them), so ``--help`` and a mistyped flag answer at once (tests/test_help.py)."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from collections.abc import Callable

__all__ = ["describe", "os_message", "parser", "run_stage", "training_parser"]

# what every training stage writes (runner.TrainOutputs reads them back)
TRAINING_OUTPUTS = {
    "--weights-out": "folder for the weights (raw.safetensors, ema.safetensors)",
    "--metrics": "DVC metrics JSON to write: test top-1, test loss, best val top-1",
    "--record": "JSON record of the run to write: every result the report reads",
    "--curves": "per-epoch CSV to write",
    "--provenance": "provenance JSON to write",
    "--resume-dir": "where resume checkpoints live (not a DVC output)",
}


def describe(doc: str) -> str:
    """The ``--help`` description of an entry point: the whole first paragraph of its docstring ``doc`` (never
    cut at a line end), as one line of plain text for argparse to wrap: reST literals and roles reduced to their
    text."""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    return re.sub(r"(?::\w+:)?`+([^`]+)`+", r"\1", first)


def parser(prog: str, doc: str, required: dict[str, str]) -> argparse.ArgumentParser:
    """The parser of the entry point ``prog`` (described by the first paragraph of its docstring ``doc``), with the
    ``required`` arguments (``--flag`` or a positional name: help); callers add any others."""
    out = argparse.ArgumentParser(prog=prog, description=describe(doc))
    for name, help_ in required.items():
        out.add_argument(name, help=help_, **({"required": True} if name.startswith("-") else {}))
    return out


def training_parser(prog: str, doc: str, inputs: dict[str, str]) -> argparse.ArgumentParser:
    """The parser of a training stage: ``--params``, the stage's ``inputs`` (``--flag: help``), the outputs every
    training stage writes, ``--backbone`` and ``--seed``."""
    out = parser(prog, doc, {"--params": "params.yaml", **inputs, **TRAINING_OUTPUTS})
    out.add_argument("--backbone", required=True, help="entry of backbones")
    out.add_argument("--seed", required=True, type=int, help="entry of seeds")
    return out


def run_stage(name: str, body: Callable[[], None]) -> None:
    """Run a stage body. A ``ValueError`` (bad params, failed checks of an input file), a missing file, or an
    ``OSError`` on a named file (an output that cannot be written: a full disk, a read-only folder, an unreadable
    input) ends the program with ``<name>: error: <message>`` on stderr and exit status 1; the body writes its
    outputs only at the end, all or nothing, so nothing half-written is left behind. Any other exception (an
    ``OSError`` with no file, a ``KeyError``, a ``TypeError``: a bug) keeps its traceback."""
    # Progress goes to stderr through logging, one line per event, terminal or not (tqdm bars: terminals only).
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # torch 2.14 deprecates torch.jit; timm and fvcore still use it at import time.
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=DeprecationWarning)
    try:
        body()
    except ValueError as exc:
        sys.exit(f"{name}: error: {exc}")
    except OSError as exc:
        if exc.filename is None and not isinstance(exc, FileNotFoundError):
            raise
        sys.exit(f"{name}: error: {os_message(exc)}")


def os_message(exc: OSError) -> str:
    """One line for an ``OSError`` on a named file: the message of one raised with its own (``OutputError``),
    else ``<file>: <reason>`` (not ``[Errno 13] Permission denied: '<file>'``)."""
    if exc.strerror is None or exc.filename is None:
        return str(exc)
    reason = exc.strerror[:1].lower() + exc.strerror[1:]
    return f"{exc.filename}: {reason}" + (f" -> {exc.filename2}" if exc.filename2 else "")
