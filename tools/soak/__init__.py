"""Soak: the real vnet-route and vnet commands under minutes of churn and disruptions.

Not part of CI or pytest. `python -m tools.soak [--minutes N] [--seed S] [--keep]` (or
`make soak ARGS=...`) starts, all on 127.0.0.1, a route, a node "home" serving an exchange
service (serveid 700) and an echo service (701) that run inside this process, and two nodes
"office-a" and "office-b" mapping both to local ports. Until the time is up it keeps 20-50 client
connections open through the offices, each checked byte for byte both ways, and every 20-30 s
disrupts one thing, in turn: a graceful route restart, a route kill -9, a kill -9 of office-a,
a kill -9 of home. office-b is never disrupted: its counts at start and end are one process's.

A connection caught by a disruption may fail, but only with an error: a reset, a refusal, or an
EOF before the whole answer. One that ends like a success with wrong or missing bytes is LOST.
Before each disruption and at the end the load pauses; with no client connection open the route
must hold no tunnel (its Prometheus gauge), and fds and RSS of every process are recorded.

With --cluster it runs three routes sharing one etcd (started by the soak, from the dev
extras): home names routes a then b, office-a b then c, office-b c then a, so every tunnel
crosses two routes; the disruptions are kill -9 of route a, SIGTERM of route b, kill -9 of
route c (each restarted), and kill -9 of home. The nodes fail over to their second route.

Exit status: 0 when nothing was LOST, every disruption recovered within 60 s, no process died
unasked and the route held no tunnel when idle; 1 otherwise; 2 when the setup failed; 130 when
interrupted. Logs are kept when it fails (or with --keep), in the directory it prints.

The files: fleet.py (the processes), load.py (the client streams and their checks),
services.py (the exchange and echo services), run.py (the load, the disruptions, the quiet
moments), report.py (the printed summary and the verdict), __main__.py (the command line).
"""
