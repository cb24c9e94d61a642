"""``python -m seedfed.server`` is ``seedfed coordinator``."""

from seedfed.server.cli import coordinator

if __name__ == "__main__":
    coordinator(prog_name="python -m seedfed.server")
