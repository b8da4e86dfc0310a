"""EV_RFID: a stand-alone RFID charging station's client of Central's MCSP/1.0 port (docs/mcsp.md)."""
