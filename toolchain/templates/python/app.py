"""{{name}}: an hio-host guest in Python (componentize-py), against the
hio:tcp WIT world (wit/hio.wit). Each line a peer sends comes back numbered
on its connection ("1: hello"); a partial line waits in the host until its
end comes. Connections come from the listener (or from `start`, after a hot
swap or a crash) with their first bytes; each cycle's arrivals carry what
came since. An answer is queued and the bytes it used consumed in one
`tx_consume`, so a crash in between loses nothing.
"""
from typing import Dict, List, Optional

from componentize_py_types import Err
import wit_world
from wit_world.exports import guest
from wit_world.imports import acceptor, host, remoter

# componentize-py may make a new Guest object per call: state lives here.
LISTENER: Optional[acceptor.Listener] = None
CONNS: Dict[int, remoter.Remoter] = {}
# Per connection: bytes handed over and not yet consumed, lines answered.
PENDING: Dict[int, bytes] = {}
COUNTS: Dict[int, int] = {}


def arrived(cid: int, data: bytes, cutoff: bool) -> None:
    conn = CONNS.get(cid)
    if conn is None:
        return
    try:
        pending = PENDING.get(cid, b"") + data
        reply, used = b"", 0
        while (end := pending.find(b"\n", used)) >= 0:
            COUNTS[cid] = COUNTS.get(cid, 0) + 1
            reply += f"{COUNTS[cid]}: ".encode() + pending[used:end + 1]
            used = end + 1
        if used:
            conn.tx_consume(reply, used)
        PENDING[cid] = pending[used:]
        if cutoff:
            conn.close()
            forget(cid)
    except Err as e:
        host.log(host.Level.WARN, f"connection {cid}: {e.value}")
        forget(cid)


def forget(cid: int) -> None:
    for table in (CONNS, PENDING, COUNTS):
        table.pop(cid, None)


def take(conn: remoter.Connection) -> None:
    CONNS[conn.id] = conn.remoter
    arrived(conn.id, conn.data, conn.cutoff)


class Guest(wit_world.exports.Guest):
    def start(self, config: guest.Config, listener: acceptor.Listener,
              connections: List[remoter.Connection], snapshot: Optional[guest.Snapshot]) -> None:
        global LISTENER
        LISTENER = listener
        for conn in connections:
            take(conn)

    def service(self, cycle: guest.Cycle) -> Optional[float]:
        if cycle.accepts and LISTENER is not None:
            for conn in LISTENER.accept_all():
                take(conn)
        for arrival in cycle.ready:
            arrived(arrival.id, arrival.data, arrival.cutoff)
        return None

    def save(self) -> guest.Snapshot:
        return guest.Snapshot(format="{{name}}/1", state=b"")
