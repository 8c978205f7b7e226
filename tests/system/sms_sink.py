"""A stand-in for Twilio's Messages API inside the system-test container: answers 201 and prints
each message body, so the journal (`journalctl -u smssink`) shows what the bot texted."""

from __future__ import annotations

import itertools
import sys

from aiohttp import web

_sids = itertools.count(1)


async def _message(request: web.Request) -> web.Response:
    form = await request.post()
    to, body = str(form.get("To", "")), str(form.get("Body", ""))
    print(f"SMS to={to} body={body}", flush=True)
    sid = f"SM{next(_sids):032x}"
    return web.json_response({"sid": sid, "status": "queued"}, status=201)


def main() -> None:
    """Serve on 127.0.0.1:PORT (the first argument) until stopped."""
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", _message)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
