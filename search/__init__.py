"""Query-time code: candidate generation, features pipeline, the aiohttp API, event logging."""
