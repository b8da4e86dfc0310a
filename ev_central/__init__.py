"""EV_Central: registers CPs, watches their state, authorises supplies, shows the panel."""
