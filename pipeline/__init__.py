"""The reproduction harness around the ``qkv`` library, grouped by concern (each subpackage's docstring says what
lives there): ``stages`` (one module per DVC stage, module name = stage name), ``training``, ``data``, ``planning``,
``reporting``, ``cluster``, ``review``; and, at the top, what all of them share: ``config`` (params.yaml, parsed and
checked once), ``cli`` (entry points' arguments and one-line errors), ``outputs`` (atomic, deterministic writes),
``provenance`` (the record beside every result), ``procfs`` (/proc), ``stop_signals`` (what stops a run, by every
route), ``scratch`` (a scratch copy of the repository) and ``profile`` (``make profile``)."""
