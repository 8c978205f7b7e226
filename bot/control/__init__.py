"""The control channel: a Unix socket between the daemon and the `bot` CLI.

`server` is the daemon's side, `client` and `commands` the CLI's, `protocol` the wire format they
share, and `api` the seam the server calls into. Import the submodule you need; this package
imports nothing, so the CLI does not load the daemon's dependencies.
"""
