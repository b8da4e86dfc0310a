"""Central's domain: the entities (CP, driver, session), the CP state table, the network of CPs and the supply book. No I/O; clocks are injected."""
