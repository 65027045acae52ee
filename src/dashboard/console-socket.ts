/**
 * The guest's console over a WebSocket: binary messages each way, guest output to the page's
 * terminal (xterm.js) and the page's keystrokes to the guest. The page is one viewer of the
 * shared console (src/run/shared-console.ts): it first gets the recent output, so it shows the
 * current screen, then everything that follows.
 *
 * Back-pressure both ways, as for every other viewer: guest output to this page completes only
 * once the WebSocket took it, and while the guest has no room for input the socket is not read.
 */
import { Readable, Writable } from 'node:stream';
import type { WebSocket } from 'ws';
import type { SharedConsole } from '../run/shared-console.ts';

export function serveConsole(ws: WebSocket, shared: SharedConsole): void {
  const output = new Writable({
    write(chunk: Buffer, _encoding, done) {
      // Completes when ws has written the frame to its socket (or failed: the viewer goes).
      if (ws.readyState !== ws.OPEN) return done();
      ws.send(chunk, { binary: true }, () => done());
    },
  });
  const input = new Readable({ read: () => ws.resume() });
  // The page sends what xterm.js reports typed, as UTF-8 bytes (text or binary frames alike).
  ws.on('message', (data: Buffer) => {
    if (!input.push(data)) ws.pause();
  });
  const disconnect = shared.connect({ output, input }, { replay: true });
  ws.on('close', () => {
    disconnect();
    output.destroy();
    input.destroy();
  });
}
