"""EV_Registry: the registry of charging points (HTTPS). Run from this folder as `python EV_Registry.py --help`, or as `python -m ev_registry`."""

from ev_registry.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
