"""EV_RFID: an RFID station's START and END at Central. Run from this folder as `python EV_RFID.py --help`, or as `python -m ev_rfid`."""

from ev_rfid.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
