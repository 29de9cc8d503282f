"""``python -m vmwrapper ...`` is the ``vm-wrapper`` command."""

from vmwrapper.cli.main import main

raise SystemExit(main())
