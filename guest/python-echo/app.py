"""hio's echo as a Python guest, built with componentize-py against the same
hio:tcp WIT world as the Rust guests. It shows the raw contract without the
Rust SDK: connections come from the listener (or from `start`) with their
first bytes; each cycle's arrivals carry the bytes that came since. Every
answer is queued and its bytes consumed in one `tx_consume`.
"""
from typing import Dict, List, Optional

from componentize_py_types import Err
import wit_world
from wit_world.exports import guest
from wit_world.imports import acceptor, host, remoter

# componentize-py may make a new Guest object per call: state lives here.
LISTENER: Optional[acceptor.Listener] = None
CONNS: Dict[int, remoter.Remoter] = {}


def echo(cid: int, data: bytes, cutoff: bool) -> None:
    conn = CONNS.get(cid)
    if conn is None:
        return
    try:
        if data:
            conn.tx_consume(data, len(data))
        if cutoff:
            conn.close()
            del CONNS[cid]
    except Err as e:
        host.log(host.Level.WARN, f"connection {cid}: {e.value}")
        del CONNS[cid]


def take(conn: remoter.Connection) -> None:
    CONNS[conn.id] = conn.remoter
    echo(conn.id, conn.data, conn.cutoff)


class Guest(wit_world.exports.Guest):
    def start(self, config: guest.Config, listener: acceptor.Listener,
              connections: List[remoter.Connection], snapshot: Optional[guest.Snapshot]) -> None:
        global LISTENER
        LISTENER = listener
        for conn in connections:
            take(conn)
        print(f"python echo guest started with {len(connections)} connections")

    def service(self, cycle: guest.Cycle) -> Optional[float]:
        if cycle.accepts and LISTENER is not None:
            for conn in LISTENER.accept_all():
                take(conn)
        for arrival in cycle.ready:
            echo(arrival.id, arrival.data, arrival.cutoff)
        return None

    def save(self) -> guest.Snapshot:
        return guest.Snapshot(format="python-echo/1", state=b"")
