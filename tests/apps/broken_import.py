"""A module that raises while it is imported, so the server must exit with a traceback."""

raise RuntimeError("broken_import raises on purpose during import")
