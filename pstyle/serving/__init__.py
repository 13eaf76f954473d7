"""The serving core without Ray: one base and many adapters per replica, experiments, API keys, image ids."""
