"""The registry sink and its parts, one job each: the device rows (`devices`), sequence
accounting (`sequence`), alert rules and data quality fed from the messages (`alerting`),
command and OTA reports (`reports`) and the silence watch (`silence`). `sink` composes them
behind the one cursor that moves with the registry's state."""

from iotmeter_tui.backend.collector.registry.sink import RegistrySink

__all__ = ["RegistrySink"]
