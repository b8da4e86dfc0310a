"""Central's domain: the CP state table and the network of CPs. No I/O; clocks are injected."""
