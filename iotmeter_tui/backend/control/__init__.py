"""The server-to-device side: commands, firmware campaigns, the firmware endpoint and its
signatures, and the dispatcher that runs them inside the collector."""
