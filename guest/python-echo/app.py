"""hio's echo as a Python guest, built with componentize-py against the same
hio:tcp WIT world as the Rust guests. It shows the raw contract without the
Rust SDK: take connections from the listener, and for every connection the
host names ready, receive what is new, queue it back, then consume it.
"""
from typing import Dict, List, Optional

from componentize_py_types import Err
import wit_world
from wit_world.exports import guest
from wit_world.imports import acceptor, host, remoter

# componentize-py may make a new Guest object per call: state lives here.
LISTENER: Optional[acceptor.Listener] = None
CONNS: Dict[int, remoter.Remoter] = {}
FRESH: List[int] = []
ALL = 0xFFFFFFFF


def take(conn: remoter.Remoter) -> None:
    CONNS[conn.id()] = conn
    FRESH.append(conn.id())


class Guest(wit_world.exports.Guest):
    def start(self, config: guest.Config, listener: acceptor.Listener,
              connections: List[remoter.Remoter], snapshot: Optional[guest.Snapshot]) -> None:
        global LISTENER
        LISTENER = listener
        for conn in connections:
            take(conn)
        print(f"python echo guest started with {len(connections)} connections")

    def service(self, cycle: guest.Cycle) -> Optional[float]:
        if cycle.accepts and LISTENER is not None:
            for conn in LISTENER.accept_all():
                take(conn)
        ids = list(cycle.ready) + FRESH
        FRESH.clear()
        for cid in ids:
            conn = CONNS.get(cid)
            if conn is None:
                continue
            try:
                receipt = conn.receive(ALL)
                if receipt.data:
                    conn.tx(receipt.data)
                    conn.consume(len(receipt.data))
                if receipt.cutoff:
                    conn.close()
                    del CONNS[cid]
            except Err as e:
                host.log(host.Level.WARN, f"connection {cid}: {e.value}")
                del CONNS[cid]
        return None

    def save(self) -> guest.Snapshot:
        return guest.Snapshot(format="python-echo/1", state=b"")
