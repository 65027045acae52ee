/**
 * Reconnection without data loss: a Linux guest writes numbered blocks through vhost-user-blk-pci
 * while `paravirt serve blk` is killed (SIGKILL) mid-write and started again on the same socket.
 * QEMU reconnects and hands the new process the inflight region; the requests the dead process
 * had taken are resubmitted, so every write the guest issued completes, and every block whose
 * write the guest saw acknowledged holds its data, in the guest's view and in the image file.
 * Run over a split ring and over a packed one (`packed=on`), whose record keeps copies of the
 * descriptors, since used descriptors overwrite the ring slots of requests still in flight.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { startGuest } from '../lab/guest.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { qemuCommand } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const MiB = 1024 * 1024;
const BLOCK = 4096;
/** Parallel writers in the guest, so that several requests are in flight when the back-end dies. */
const WRITERS = 4;
/** Blocks each writer writes: writer w writes blocks w, w + WRITERS, w + 2 * WRITERS, ... */
const BLOCKS_PER_WRITER = 150;
const BLOCKS = WRITERS * BLOCKS_PER_WRITER;
/** The back-end is killed once the guest has seen this many writes acknowledged, then this many more, ... */
const KILL_EVERY = 80;
const KILLS = 3;
const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));

/** Block i's contents: "blk" and its number in eight digits, then zeros. */
function blockContents(i: number): Uint8Array {
  const out = new Uint8Array(BLOCK);
  out.set(new TextEncoder().encode(`blk${String(i).padStart(8, '0')}`));
  return out;
}

/** One `paravirt serve blk` process on `socket`, ready once it says it listens. */
async function serve(socket: string, image: string): Promise<PeerProcess> {
  const peer = new PeerProcess('paravirt serve blk', [process.execPath, PARAVIRT, 'serve', 'blk', '--socket-path', socket, '--image', image, '--log-level', 'info'], {
    textStdout: true,
  });
  await peer.waitForOutput(/vhost-user back-end listening/);
  return peer;
}

/**
 * The guest's writers: each writes its blocks with O_DIRECT, one dd per block, and records the
 * block number in /tmp/acked once dd returned success, then leaves /tmp/done.W.
 */
const writersScript = (): string =>
  `rm -f /tmp/acked /tmp/done.*; touch /tmp/acked
for w in $(seq 0 ${WRITERS - 1}); do
  ( i=$w
    while [ $i -lt ${BLOCKS} ]; do
      { printf 'blk%08d' $i; head -c ${BLOCK - 11} /dev/zero; } | dd of=/dev/vda bs=${BLOCK} seek=$i oflag=direct conv=notrunc 2>/dev/null || { echo "write $i failed" >> /tmp/failed; break; }
      echo $i >> /tmp/acked
      i=$((i + ${WRITERS}))
    done
    touch /tmp/done.$w ) > /dev/null 2>&1 &
done`;

/** The process's scheduling state letter from /proc/PID/stat ('T' once a SIGSTOP took effect). */
function processState(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

/**
 * Entries ring 0's record in the back-end's inflight region marks in flight (inflight byte 1;
 * split: entries of 16 bytes after a 16-byte header, packed: 32 after 32), read through the
 * back-end's own mapping.
 */
function inflightHeads(pid: number, queueSize: number, packed: boolean): number[] {
  const line = readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').find((l) => l.includes('-inflight'));
  assert.ok(line !== undefined, 'the back-end maps the inflight region');
  const region = readFileSync(`/proc/${pid}/map_files/${line.split(' ')[0]}`);
  const heads: number[] = [];
  const stride = packed ? 32 : 16;
  for (let head = 0; head < queueSize; head++) if (region[stride + stride * head] === 1) heads.push(head);
  return heads;
}

/**
 * Kill the back-end while it holds requests: stop it (SIGSTOP), look at its inflight record, and
 * kill it if some request is in flight, else let it go on and look again a moment later. The
 * pause between looks spreads them over the guest's writes; it synchronises nothing. Returns the
 * heads that were in flight at the kill (empty if no look found one).
 */
async function killWithRequestsInFlight(peer: PeerProcess, queueSize: number, packed: boolean): Promise<number[]> {
  const pid = peer.child.pid!;
  let heads: number[] = [];
  for (let look = 0; look < 400; look++) {
    peer.child.kill('SIGSTOP');
    while (processState(pid) !== 'T') await new Promise(setImmediate);
    heads = inflightHeads(pid, queueSize, packed);
    if (heads.length > 0) break;
    peer.child.kill('SIGCONT');
    await delay(2 + (look % 5));
  }
  peer.child.kill('SIGKILL');
  assert.equal((await peer.exited).signal, 'SIGKILL');
  return heads;
}

/** Returns once the guest has seen `n` writes acknowledged. */
const ackedAtLeast = (n: number): string => `while [ $(wc -l < /tmp/acked) -lt ${n} ]; do usleep 20000; done`;

for (const packed of [false, true]) {
  test(`vhost-user-blk, ${packed ? 'packed' : 'split'} ring: the back-end killed mid-write and restarted loses no acknowledged write`, async (t: TestContext) => {
    if (!requireLab(t)) return;
    const qemu = qemuCommand();
    const dir = mkdtempSync(join(qemu.shareDir, 'vu-reconnect-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const image = join(dir, 'disk.img');
    writeFileSync(image, new Uint8Array(0));
    truncateSync(image, 16 * MiB);
    const socket = join(dir, 'blk.sock');
    let backend = await serve(socket, image);
    t.after(() => backend.kill());

    const guest = await startGuest(t, {
      name: 'vu-reconnect',
      devices: [
        '-chardev',
        `socket,id=c0,path=${qemu.toQemuPath(socket)},reconnect-ms=1000`,
        '-device',
        `vhost-user-blk-pci,chardev=c0,num-queues=1${packed ? ',packed=on' : ''}`,
      ],
    });
    const shape = await backend.waitForOutput(/"queueSize":(\d+)[^\n]*inflight region in use/, 0, 'being handed an inflight region by QEMU');
    const queueSize = Number(shape[1]);
    // The ring layout the guest's driver negotiated: bit 34 (RING_PACKED) of the features string.
    const features = (await guest.check('cat /sys/block/vda/device/features')).trim();
    assert.equal(features[34], packed ? '1' : '0', `RING_PACKED ${packed ? '' : 'not '}negotiated (features ${features})`);
    await guest.check(writersScript());

    const inFlightAtKill: number[] = [];
    const resubmitted: number[] = [];
    for (let k = 1; k <= KILLS; k++) {
      await guest.check(ackedAtLeast(k * KILL_EVERY), { timeoutMs: 120_000 });
      inFlightAtKill.push((await killWithRequestsInFlight(backend, queueSize, packed)).length);
      backend = await serve(socket, image);
      // QEMU reconnects on its own, hands over the region it kept, and restarts the ring.
      const resumed = await backend.waitForOutput(/"resubmitting":(\d+)[^\n]*ring resumes from its inflight record/, 0, 'resuming the ring after QEMU reconnected');
      resubmitted.push(Number(resumed[1]));
    }
    t.diagnostic(`requests in flight at each of the ${KILLS} kills: ${inFlightAtKill.join(', ')}; resubmitted: ${resubmitted.join(', ')}`);
    // Fewer only when the kill fell between publishing used entries and clearing their records,
    // which recovery repairs.
    resubmitted.forEach((n, k) => assert.ok(n <= inFlightAtKill[k], `kill ${k + 1}: ${n} resubmitted, ${inFlightAtKill[k]} were in flight`));
    assert.ok(resubmitted.some((n) => n > 0), 'at least one kill caught requests in flight, and they were resubmitted');

    // Every writer finishes: no request was lost, or its dd would wait forever.
    await guest.check(`while [ $(ls /tmp/done.* 2>/dev/null | wc -l) -lt ${WRITERS} ]; do usleep 50000; done`, { timeoutMs: 180_000 });
    assert.equal((await guest.run('cat /tmp/failed')).stdout, '', 'no write failed');
    const acked = (await guest.check('cat /tmp/acked')).trim().split('\n').map(Number);
    assert.equal(new Set(acked).size, BLOCKS, 'every block was written and acknowledged once');

    const disk = readFileSync(image);
    for (const i of acked) {
      assert.deepEqual(disk.subarray(i * BLOCK, (i + 1) * BLOCK), Buffer.from(blockContents(i)), `block ${i} in the image file`);
    }
    const inGuest = (await guest.check(`dd if=/dev/vda bs=${BLOCK} count=${BLOCKS} iflag=direct 2>/dev/null | sha256sum`)).split(' ')[0];
    const onHost = createHash('sha256').update(disk.subarray(0, BLOCKS * BLOCK)).digest('hex');
    assert.equal(inGuest, onHost, 'the guest reads what the image file holds');
  });
}
