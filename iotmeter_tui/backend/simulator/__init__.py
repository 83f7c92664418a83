"""Simulated traction power meters: feeder physics (physics), one device agent (device), a
fleet on one event loop (fleet), the dashboard's thread-safe handle (controller) and the
headless command (cli: run_simulate). See docs/simulator.md."""
