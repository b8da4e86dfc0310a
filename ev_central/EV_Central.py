"""EV_Central: the control centre. Run from this folder as `python EV_Central.py --help`, or as `python -m ev_central`."""

from ev_central.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
