"""The global scheduler: routing policies (plain Python), CHWBL, kv index, control loop."""
