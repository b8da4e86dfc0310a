"""EV_W: the weather office. Run from this folder as `python EV_W.py --help`, or as `python -m ev_weather`."""

from ev_weather.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
