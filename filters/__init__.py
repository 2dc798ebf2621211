"""Built-in request filters, one module each, registered through the same hook third-party packages use."""
