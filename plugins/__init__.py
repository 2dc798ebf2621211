"""Built-in plugins that are not plain filters: routing, telemetry."""
