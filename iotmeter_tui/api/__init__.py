"""The device-manager REST API (`iotmeter api`): Flask + flask-openapi3, served by gunicorn.

One more entry into the services the CLI and the dashboard use (commands, OTA, devices, API
keys, audit, the stores); nothing here talks MQTT or SQL itself. docs/api.md is the guide."""
