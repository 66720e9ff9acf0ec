// {{name}}: an hio-host guest in JavaScript (componentize-js), against the
// hio:tcp WIT world (wit/hio.wit). Each line a peer sends comes back
// numbered on its connection ("1: hello"); a partial line waits in the host
// until its end comes. Connections come from the listener (or from `start`,
// after a hot swap or a crash) with their first bytes; each cycle's
// arrivals carry what came since. An answer is queued and the bytes it
// used consumed in one `txConsume`, so a crash in between loses nothing.
// WIT types here: u64 is a BigInt, list<u8> a Uint8Array, a result's error
// is thrown (its value in `e.payload`), an option is a value or undefined.
import { log } from 'hio:tcp/host@0.2.3';

let theListener = null;
// Per connection id: its remoter, bytes handed over and not consumed, lines answered.
const conns = new Map();

function arrived(id, data, cutoff) {
  const c = conns.get(id);
  if (c === undefined) return;
  try {
    const pending = new Uint8Array(c.pending.length + data.length);
    pending.set(c.pending);
    pending.set(data, c.pending.length);
    const parts = [];
    let used = 0;
    for (let end = pending.indexOf(10, used); end >= 0; end = pending.indexOf(10, used)) {
      c.count += 1;
      parts.push(new TextEncoder().encode(`${c.count}: `), pending.subarray(used, end + 1));
      used = end + 1;
    }
    if (used > 0) {
      const reply = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) {
        reply.set(p, at);
        at += p.length;
      }
      c.remoter.txConsume(reply, BigInt(used));
    }
    c.pending = pending.slice(used);
    if (cutoff) {
      c.remoter.close();
      conns.delete(id);
    }
  } catch (e) {
    log('warn', `connection ${id}: ${JSON.stringify(e.payload ?? String(e))}`);
    conns.delete(id);
  }
}

function take(connection) {
  conns.set(connection.id, { remoter: connection.remoter, pending: new Uint8Array(), count: 0 });
  arrived(connection.id, connection.data, connection.cutoff);
}

export const guest = {
  start(config, listener, connections, snapshot) {
    theListener = listener;
    for (const c of connections) take(c);
  },
  service(cycle) {
    if (cycle.accepts && theListener !== null) {
      for (const c of theListener.acceptAll()) take(c);
    }
    for (const a of cycle.ready) arrived(a.id, a.data, a.cutoff);
    return undefined;
  },
  save() {
    return { format: '{{name}}/1', state: new Uint8Array() };
  },
};
