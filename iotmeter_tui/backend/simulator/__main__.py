"""`python -m iotmeter_tui.backend.simulator`: the simulator with its own flags."""

from iotmeter_tui.backend.simulator.cli import main

raise SystemExit(main())
