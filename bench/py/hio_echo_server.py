"""hio 0.6.10's own echo server (the seed's implementation), for hio-bench:
hio's Server under its EchoServerDoer, run by a real-time Doist with tock 0
(every cycle as fast as Python goes, as a latency-minded hio user runs it).

usage: hio_echo_server.py PORT   (hio cannot listen on port 0)
Prints "serving ha=127.0.0.1:PORT" on stderr once listening.
"""
import sys

from hio.base import doing
from hio.core.tcp import serving

port = int(sys.argv[1])
server = serving.Server(host="127.0.0.1", port=port, bs=8096)
doer = serving.EchoServerDoer(server=server)


class Ready(doing.Doer):
    """Says where it listens once the echo doer has opened the socket."""

    def enter(self):
        print(f"serving ha=127.0.0.1:{port}", file=sys.stderr, flush=True)

    def recur(self, tyme):
        return True  # done after one run


doist = doing.Doist(tock=0.0, real=True)
doist.do(doers=[doer, Ready()])
