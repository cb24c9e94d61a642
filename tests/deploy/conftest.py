"""The deploy tests read files and run commands; nothing needs a Docker engine."""
