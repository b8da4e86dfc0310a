"""EV_W, the weather office: checks the temperature at the CPs' locations and reports to Central's
API (docs/weather.md)."""
