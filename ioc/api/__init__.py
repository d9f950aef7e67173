"""HTTP API: app factory, dependencies, routers."""
