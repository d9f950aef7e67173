"""High availability: the brain's PostgreSQL lease with a fencing epoch, the brain that runs the stateful
stages only while it holds the lease, cross-replica sync (LISTEN/NOTIFY) and officers' actions handed to the
leader. See docs/ha.md."""
