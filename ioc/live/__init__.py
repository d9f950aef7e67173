"""The live feed: in-memory device state built from readings as they are ingested, and the WebSocket hub."""
