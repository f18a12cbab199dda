"""The demo recorder library (`steno-exportd demo-data`): database and audio of made-up meetings."""
from steno_exportd.demo.recorder import DB_NAME, generate, schema_sql

__all__ = ["DB_NAME", "generate", "schema_sql"]
