"""EV_CP_M: the charging point's Monitor: registers the CP at Central and watches its Engine."""
