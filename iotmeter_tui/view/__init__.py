"""What the dashboard shows, apart from any widget: formatting and dashboard state."""
