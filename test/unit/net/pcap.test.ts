import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LINKTYPE_ETHERNET, PcapWriter, capture, readPcap } from '../../../src/devices/net/pcap.ts';
import { createCable } from '../../../src/devices/net/port.ts';
import { NO_OFFLOAD } from '../../../src/devices/net/wire.ts';
import { MAC_A, MAC_B, frame } from './fixture.ts';

/** tshark's path when installed: the capture is then also checked by an independent reader. */
const TSHARK = ['/usr/bin/tshark', '/usr/local/bin/tshark'].find((p) => existsSync(p));

test('pcap round trip: frames through a captured port both ways, read back in order with timestamps', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'paravirt-pcap-'));
  try {
    const path = join(dir, 'cap.pcap');
    let now = 1_700_000_000_123.456;
    const writer = new PcapWriter(path, { clock: () => now, snaplen: 1000 });
    const [inner, far] = createCable();
    const port = capture(inner, writer);
    const received: Uint8Array[] = [];
    port.onReceive((f) => received.push(f));
    const out = frame(MAC_B, MAC_A, 60, 1);
    const back = frame(MAC_A, MAC_B, 1500, 2);
    port.send(out, NO_OFFLOAD);
    now += 2.5;
    far.onReceive(() => {});
    far.send(back, NO_OFFLOAD);
    writer.close();
    assert.deepEqual(received, [back]);

    const { linkType, snaplen, records } = readPcap(readFileSync(path));
    assert.equal(linkType, LINKTYPE_ETHERNET);
    assert.equal(snaplen, 1000);
    assert.equal(records.length, 2);
    assert.deepEqual(records[0].data, out);
    assert.equal(records[0].originalLength, 60);
    assert.ok(Math.abs(records[0].time - 1_700_000_000_123.456) < 0.001);
    assert.ok(Math.abs(records[1].time - records[0].time - 2.5) < 0.001);
    assert.deepEqual(records[1].data, back.subarray(0, 1000), 'truncated to the snapshot length');
    assert.equal(records[1].originalLength, 1500);

    if (TSHARK !== undefined) {
      const text = execFileSync(TSHARK, ['-r', path, '-T', 'fields', '-e', 'eth.dst', '-e', 'eth.src', '-e', 'frame.len', '-e', 'frame.cap_len'], {
        encoding: 'utf8',
        env: { ...process.env, HOME: dir },
      });
      assert.deepEqual(text.trim().split('\n'), [`${MAC_B}\t${MAC_A}\t60\t60`, `${MAC_A}\t${MAC_B}\t1500\t1000`]);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('readPcap names what is wrong with a file that is not a complete capture', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'paravirt-pcap-'));
  try {
    const path = join(dir, 'cap.pcap');
    const writer = new PcapWriter(path);
    writer.write(frame(MAC_B, MAC_A, 60));
    writer.close();
    const bytes = readFileSync(path);
    assert.throws(() => readPcap(bytes.subarray(0, bytes.length - 1)), /claims 60 bytes past the end of the file/);
    assert.throws(() => readPcap(bytes.subarray(0, 30)), /record header at byte 24 is cut short/);
    writeFileSync(path, 'not a capture at all');
    assert.throws(() => readPcap(readFileSync(path)), /not a little-endian classic pcap file/);
    assert.throws(() => new PcapWriter(path, { snaplen: 0 }), /snapshot length 0/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
