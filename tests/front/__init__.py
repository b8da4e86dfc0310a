"""EV_Front, Central's web page, in a real browser (Playwright driving Debian's Chromium)."""
