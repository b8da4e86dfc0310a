"""EV_Driver: the driver's app. Run from this folder as `python EV_Driver.py --help`, or as `python -m ev_driver`."""

from ev_driver.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
