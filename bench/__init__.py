"""Benchmarks: the bot measured against floors, side by side in one run (`python -m bench`).

* `latency`: trigger to the BAG order at the gateway, the bot vs a bare ib_async script;
* `storm`: N concurrent manual `trade` requests on the control socket while an entry is working;
* `footprint`: idle memory and time to READY=1 of `bot run` vs a bare process with the same imports;
* `claim`: the durable same-day claim on a real file.

`python -m bench [NAME ...] [--quick]` prints one markdown table; `bench/RESULTS.md` keeps the
latest full run with the machine it ran on. `bench.chaos` (the exactly-once chaos runner) is
separate: `python -m bench.chaos`.
"""
