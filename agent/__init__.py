"""The p2pull node agent: configuration, CLI, wiring of the library's services, signals."""
