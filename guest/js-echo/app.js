// hio's echo as a JavaScript guest, built with componentize-js (jco
// componentize) against the same hio:tcp WIT world as the Rust and Python
// guests: the raw contract, without an SDK. Connections come from the
// listener (or from `start`, after a hot swap or a crash) with their first
// bytes; each cycle's arrivals carry the bytes that came since. Every answer
// is queued and its bytes consumed in one `txConsume`.
import { log } from 'hio:tcp/host@0.2.3';

// u64 ids are BigInts; the remoter resources by id.
const conns = new Map();
let theListener = null;

function echo(id, data, cutoff) {
  const conn = conns.get(id);
  if (conn === undefined) return;
  try {
    if (data.length > 0) conn.txConsume(data, BigInt(data.length));
    if (cutoff) {
      conn.close();
      conns.delete(id);
    }
  } catch (e) {
    log('warn', `connection ${id}: ${JSON.stringify(e.payload ?? String(e))}`);
    conns.delete(id);
  }
}

function take(connection) {
  conns.set(connection.id, connection.remoter);
  echo(connection.id, connection.data, connection.cutoff);
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
    for (const a of cycle.ready) echo(a.id, a.data, a.cutoff);
    return undefined;
  },
  save() {
    return { format: 'js-echo/1', state: new Uint8Array() };
  },
};
