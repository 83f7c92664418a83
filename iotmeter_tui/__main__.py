"""`python -m iotmeter_tui` is the `iotmeter` command."""

from iotmeter_tui.cli import main

raise SystemExit(main())
