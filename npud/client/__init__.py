"""npud.client: the Python client library (sync and asyncio) over the generated stubs."""
