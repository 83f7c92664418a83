"""MQTT 3.1.1 for many connections on one asyncio loop: a pure codec and a small client."""
