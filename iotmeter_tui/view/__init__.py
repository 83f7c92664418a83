"""What the dashboard shows that is not a widget: its state and how it formats values."""
