"""``python -m pipeline.cluster submit|status|cancel``: :mod:`pipeline.cluster.commands`."""

import sys

from pipeline.cluster.commands import main

sys.exit(main())
