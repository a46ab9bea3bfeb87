"""``python -m smctl ...`` (same as the ``smctl`` console script)."""

from smctl.cli import main

raise SystemExit(main())
