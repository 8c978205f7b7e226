"""The dashboard: a read-only page for the trader, served by the daemon in its own event loop.

`settings` (the `[dashboard]` section), `token` (the access token kept in the state directory),
`view` (the snapshot the page shows, gathered from the daemon's own views) and `server` (aiohttp:
the guard, the headers, the page and its server-sent events). Only `server` imports aiohttp.
"""
