"""``python -m pipeline.config params.yaml``: parse and check a params file without importing torch (sections,
keys, types, values, names, cross-section rules); one line and exit status 1 if anything is wrong.

Every stage's command in dvc.yaml runs this first, as a line of its own: DVC runs a stage's command lines one
by one and stops at the first that fails, so a name no shell should see (a quote, a semicolon) is refused
before the line that pastes it into a command is ever handed to a shell.
"""

from __future__ import annotations

import sys

from pipeline.cli import parser, run_stage
from pipeline.config import load


def main(argv: list[str] | None = None) -> None:
    args = parser("python -m pipeline.config", __doc__, {"params": "the params file to check"}).parse_args(argv)
    run_stage("params", lambda: load(args.params))


if __name__ == "__main__":
    main(sys.argv[1:])
