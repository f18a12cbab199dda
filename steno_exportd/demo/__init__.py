"""The demo recorder library (`steno-exportd demo-data`): recorder.py (database, sessions), audio.py (WAV/FLAC)."""
from steno_exportd.demo.recorder import DB_NAME, DEMO_MARK, create_database, generate, is_demo_database, schema_sql

__all__ = ["DB_NAME", "DEMO_MARK", "create_database", "generate", "is_demo_database", "schema_sql"]
