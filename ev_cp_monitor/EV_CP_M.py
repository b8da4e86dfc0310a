"""EV_CP_M: a charging point's Monitor. Run from this folder as `python EV_CP_M.py --help`, or as `python -m ev_cp_monitor`."""

from ev_cp_monitor.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
