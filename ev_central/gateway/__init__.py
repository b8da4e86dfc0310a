"""Central's Monitor side as gateway processes (docs/scaling.md, "Gateways").

``EV_Central gateway`` serves Monitor sessions as Central does (``MonitorServer``: handshake,
frames, ACKs, signs of life, silence, TLS and credentials in secure mode) and exchanges only
CP events and commands with the core over Kafka: ``wire`` (the records), ``edge`` (the gateway
process), ``cli`` (its command line). The core's side is ``ev_central/remote.py``.
"""
