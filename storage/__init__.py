"""Storage: schema, versioned migrations, partition maintenance, and every SQL statement ingest and the API use.

Two backends behind one API: TimescaleDB (hypertables, compression, retention policies) when the
extension is available, native PostgreSQL range partitioning otherwise. The choice is made once by
``ioc db upgrade`` and recorded in ``ioc_meta``; runtime code reads it, never re-decides.
"""
