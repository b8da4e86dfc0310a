"""EV_CP_E: a charging point's Engine. Run from this folder as `python EV_CP_E.py --help`, or as `python -m ev_cp_engine`."""

from ev_cp_engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
