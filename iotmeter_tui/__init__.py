"""iotmeter: terminal-first operations platform for railway traction power meters."""
