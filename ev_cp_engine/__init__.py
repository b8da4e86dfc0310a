"""EV_CP_E: the charging point's Engine: answers health checks and simulates supplies."""
