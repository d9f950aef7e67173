"""The IOC service: settings, app factory + lifespan, API routers, CLI (and later the WebSocket hub, alerts)."""
