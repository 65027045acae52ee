import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PeerProcess } from '../../lab/peer-process.ts';

/** Each escalation step's share in these tests: short, the peers here never end on their own. */
const STEP_MS = 300;

test('stop ends a peer whose own child keeps its pipes open', async (t) => {
  // The shell leaves a background sleep holding stdout and stderr, then becomes a sleep itself:
  // SIGTERM ends the peer, but its pipes stay open for as long as the background one lives.
  const peer = new PeerProcess('pipe holder', ['sh', '-c', 'sleep 300 & echo $!; exec sleep 300'], { textStdout: true });
  const holder = Number((await peer.waitForOutput(/^(\d+)\n/))[1]);
  t.after(() => process.kill(holder, 'SIGKILL'));
  const exit = await peer.stop(undefined, STEP_MS);
  assert.equal(exit.signal, 'SIGTERM');
  assert.equal(peer.running, false);
  // The background process is still there: only the peer was ended, and it did not wait on it.
  assert.doesNotThrow(() => process.kill(holder, 0));
});

test('stop escalates to SIGKILL for a peer that ignores being asked and SIGTERM, and says so', async () => {
  const peer = new PeerProcess('deaf', ['sh', '-c', 'trap "" TERM; echo ready; exec sleep 300'], { textStdout: true });
  await peer.waitForOutput(/ready\n/);
  const exit = await peer.stop(() => peer.send('quit\n'), STEP_MS);
  assert.equal(exit.signal, 'SIGKILL');
  assert.match(peer.output, /deaf was still running 300 ms after it was asked to exit; sent SIGTERM/);
  assert.match(peer.output, /deaf was still running 300 ms after it was sent SIGTERM; sent SIGKILL/);
});

test('stop of a peer that quits when asked needs no signal', async () => {
  const peer = new PeerProcess('polite', ['sh', '-c', 'echo ready; read line; echo "bye $line"'], { textStdout: true });
  await peer.waitForOutput(/ready\n/);
  const exit = await peer.stop(() => peer.send('quit\n'), 20_000);
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.match(peer.stdout, /bye quit\n/);
});

test('stop of a peer that already ended resolves with how it ended', async () => {
  const peer = new PeerProcess('short', ['sh', '-c', 'exit 3'], { textStdout: true });
  assert.deepEqual(await peer.exited, { code: 3, signal: null });
  assert.deepEqual(await peer.stop(), { code: 3, signal: null });
});
