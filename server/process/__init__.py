"""The serving process: settings, the server that wires fronts to models, the supervisor, the CLI."""
