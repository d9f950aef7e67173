"""The alert engine: rules, lifecycle, incidents, silences, escalation, notifications."""
