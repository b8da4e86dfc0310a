"""Code shared by every EVCharging program: the socket protocol, the link layer, logging, lifecycle."""
