"""What every stage's ``main`` shares: quiet known third-party noise, turn bad input into one clear line."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable


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
