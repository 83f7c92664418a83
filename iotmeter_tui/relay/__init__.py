"""The alert relay: Alertmanager webhooks -> GitHub issues (`iotmeter alert-relay`)."""
