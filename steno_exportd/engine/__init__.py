"""The export engine: plan, write, verify, record; jobs and state."""
