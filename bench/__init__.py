"""Benchmarks: the bot measured against floors, side by side in one run (`python -m bench`).

Under the simulator's IB latency profile (`bot.sim.latency.LatencyProfile.ib`):

* `latency`: trigger to the BAG order at the gateway, the bot vs a bare ib_async script doing the
  same broker work as concurrently as ib_async allows; IB's limits used by one entry;
* `exits`: the market move that crosses a profit target to the closing order, bot vs a streaming
  floor; IB's limits used by one exit;
* `streaming`: the daemon's CPU while seven double calendars (28 legs) stream at IB's rate.

At loopback speed:

* `storm`: N concurrent manual `trade` requests on the control socket while an entry is working,
  vs a bare asyncio socket server;
* `footprint`: idle memory and time to READY=1 of `bot run` vs a bare process with the same imports;
* `claim`: the durable same-day claim on a real file;
* `season`: 60 trading days in accelerated time (a paced `ScaledClock`), wall clock, and IB's
  limits over the season.

`python -m bench [NAME ...] [--quick]` prints one markdown table; `bench/RESULTS.md` keeps the
latest full run with the machine it ran on. `bench.chaos` (the exactly-once chaos runner) and
`bench.dashboard` (the dashboard's weight) are separate: `python -m bench.chaos`.
"""
