"""EV_Driver: the driver's app: requests supplies over Kafka and shows their progress."""
