/**
 * The SBC disk target, command by command: CDB parsing, data transfer and sense, including
 * malformed CDBs, transfers past the end of the disk and buffers that do not match the CDB.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import { BLOCK_SIZE, ScsiDisk } from '../../../src/devices/scsi/disk.ts';
import { Sense, decodeSense } from '../../../src/devices/scsi/sense.ts';
import { ScsiTargets } from '../../../src/devices/scsi/target.ts';
import { type Outcome, be32, oneDisk, run } from './target-fixture.ts';

function good(o: Outcome): Uint8Array {
  if (o.kind !== 'good') assert.fail(`expected GOOD, got ${o.kind === 'check' ? `sense ${JSON.stringify(o.sense)}` : o.kind}`);
  return o.data;
}

function sense(o: Outcome): { key: number; asc: number; ascq: number; bytes: Uint8Array } {
  if (o.kind !== 'check') assert.fail(`expected CHECK CONDITION, got ${o.kind}`);
  return { ...o.sense, bytes: o.senseBytes };
}

const READ_10 = (lba: number, blocks: number): number[] => [0x28, 0, lba >>> 24, (lba >> 16) & 0xff, (lba >> 8) & 0xff, lba & 0xff, 0, blocks >> 8, blocks & 0xff, 0];
const WRITE_10 = (lba: number, blocks: number): number[] => [0x2a, ...READ_10(lba, blocks).slice(1)];
const READ_16 = (lba: number, blocks: number): number[] => [0x88, 0, 0, 0, 0, 0, lba >>> 24, (lba >> 16) & 0xff, (lba >> 8) & 0xff, lba & 0xff, blocks >>> 24, (blocks >> 16) & 0xff, (blocks >> 8) & 0xff, blocks & 0xff, 0, 0];
const WRITE_16 = (lba: number, blocks: number): number[] => [0x8a, ...READ_16(lba, blocks).slice(1)];

test('a new LUN reports the power-on reset once, to the first command that is not INQUIRY, REPORT LUNS or REQUEST SENSE', async () => {
  const targets = new ScsiTargets();
  targets.add({ target: 0, lun: 0 }, new ScsiDisk({ backend: new MemoryBackend(8 * BLOCK_SIZE), serial: 's' }));
  good(await run(targets, [0x12, 0, 0, 0, 36, 0], { inLength: 36 }));
  good(await run(targets, [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], { inLength: 256 }));
  const ua = sense(await run(targets, [0x00]));
  assert.deepEqual([ua.key, ua.asc, ua.ascq], [6, 0x29, 0x00]);
  good(await run(targets, [0x00]));
});

test('INQUIRY: standard data of a disk, SPC-5, command queuing, cut to the allocation length', async () => {
  const { targets } = await oneDisk();
  const data = good(await run(targets, [0x12, 0, 0, 0, 36, 0], { inLength: 36 }));
  assert.equal(data.length, 36);
  assert.equal(data[0], 0x00, 'direct access block device');
  assert.equal(data[2], 0x07, 'SPC-5');
  assert.equal(data[3] & 0x0f, 2, 'response data format 2');
  assert.equal(data[7] & 0x02, 0x02, 'CMDQUE');
  assert.equal(new TextDecoder().decode(data.subarray(8, 16)), 'PARAVIRT');
  assert.equal(good(await run(targets, [0x12, 0, 0, 0, 5, 0], { inLength: 36 })).length, 5, 'allocation length 5');
  assert.equal(sense(await run(targets, [0x12, 0, 0x80, 0, 36, 0], { inLength: 36 })).asc, 0x24, 'a page code without EVPD');
});

test('INQUIRY VPD: supported pages, serial, a stable NAA and T10 identifier, block limits, characteristics, provisioning', async () => {
  const { targets } = await oneDisk(64, { serial: 'DISK-7' });
  const vpd = async (page: number): Promise<Uint8Array> => good(await run(targets, [0x12, 1, page, 0x01, 0, 0], { inLength: 256 }));
  assert.deepEqual([...(await vpd(0x00)).subarray(4)], [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
  assert.equal(new TextDecoder().decode((await vpd(0x80)).subarray(4)), 'DISK-7');
  const id = await vpd(0x83);
  assert.equal(id[4 + 1] & 0x0f, 3, 'first designator: NAA');
  assert.equal(id[4 + 4] >> 4, 3, 'NAA 3, locally assigned');
  const again = (await oneDisk(64, { serial: 'DISK-7' })).targets;
  assert.deepEqual(good(await run(again, [0x12, 1, 0x83, 0x01, 0, 0], { inLength: 256 })), id, 'same serial, same identifiers');
  assert.match(new TextDecoder().decode(id), /PARAVIRTDISK-7/);
  const limits = await vpd(0xb0);
  assert.equal(limits.length, 64);
  assert.equal(be32(limits, 8), 0xffff, 'MAXIMUM TRANSFER LENGTH');
  assert.ok(be32(limits, 20) > 0, 'MAXIMUM UNMAP LBA COUNT');
  assert.equal((await vpd(0xb1))[5], 1, 'non-rotating');
  const prov = await vpd(0xb2);
  assert.equal(prov[5] & 0xe0, 0xe0, 'LBPU, LBPWS, LBPWS10');
  assert.equal((prov[5] >> 2) & 7, 1, 'LBPRZ: unmapped blocks read zero');
  const bad = sense(await run(targets, [0x12, 1, 0x99, 0, 255, 0], { inLength: 255 }));
  assert.deepEqual([bad.key, bad.asc], [5, 0x24]);
  assert.equal(bad.bytes[15] & 0xc0, 0xc0, 'SKSV and C/D: the field is in the CDB');
  assert.equal(bad.bytes[17], 2, 'pointing at the page code');
});

test('READ CAPACITY(10) and (16): last LBA, 512-byte blocks, LBPME on a writable disk', async () => {
  const { targets } = await oneDisk(100);
  const ten = good(await run(targets, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], { inLength: 8 }));
  assert.equal(be32(ten, 0), 99);
  assert.equal(be32(ten, 4), 512);
  const sixteen = good(await run(targets, [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], { inLength: 32 }));
  assert.equal(be32(sixteen, 4), 99);
  assert.equal(be32(sixteen, 8), 512);
  assert.equal(sixteen[14] & 0xc0, 0xc0, 'LBPME and LBPRZ');
  const ro = (await oneDisk(100, { readOnly: true })).targets;
  assert.equal(good(await run(ro, [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], { inLength: 32 }))[14], 0, 'no provisioning on a read-only LUN');
});

test('READ and WRITE of every size move the right blocks', async () => {
  const { targets, backend } = await oneDisk(600);
  const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n * BLOCK_SIZE }, (_, i) => (i * 7 + seed) & 0xff);
  // WRITE(6) / READ(6): 21-bit LBA; transfer length 0 means 256 blocks.
  const a = pattern(256, 1);
  assert.equal(good(await run(targets, [0x0a, 0, 0, 10, 0, 0], { out: a })).length, 0);
  assert.deepEqual(backend.bytes.subarray(10 * 512, 266 * 512), a);
  assert.deepEqual(good(await run(targets, [0x08, 0, 0, 10, 0, 0], { inLength: 256 * 512 })), a);
  const b = pattern(3, 2);
  good(await run(targets, WRITE_10(300, 3), { out: b }));
  assert.deepEqual(good(await run(targets, READ_10(300, 3), { inLength: 3 * 512 })), b);
  const c = pattern(2, 3);
  good(await run(targets, [0xaa, 0, 0, 0, 0x01, 0x90, 0, 0, 0, 2, 0, 0], { out: c }));
  assert.deepEqual(good(await run(targets, [0xa8, 0, 0, 0, 0x01, 0x90, 0, 0, 0, 2, 0, 0], { inLength: 1024 })), c);
  const d = pattern(4, 4);
  good(await run(targets, WRITE_16(596, 4), { out: d }));
  assert.deepEqual(good(await run(targets, READ_16(596, 4), { inLength: 4 * 512 })), d);
  assert.equal(good(await run(targets, READ_10(0, 0))).length, 0, 'zero blocks: nothing moved, GOOD');
});

test('transfers past the end are LBA OUT OF RANGE, including 64-bit LBAs and wrap-around', async () => {
  const { targets } = await oneDisk(64);
  const lba = sense(await run(targets, READ_10(63, 2), { inLength: 1024 }));
  assert.deepEqual([lba.key, lba.asc, lba.ascq], [5, 0x21, 0]);
  assert.equal(sense(await run(targets, WRITE_16(64, 1), { out: new Uint8Array(512) })).asc, 0x21);
  const huge = [0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0];
  assert.equal(sense(await run(targets, huge, { inLength: 512 })).asc, 0x21, 'LBA 2^64 - 1');
  assert.equal(sense(await run(targets, READ_16(1, 0xffffffff), { inLength: 512 })).asc, 0x21, 'count past the disk');
});

test('buffers that do not match the CDB: too short is OVERRUN, a larger data-in buffer leaves a residual', async () => {
  const { targets } = await oneDisk(64);
  assert.equal((await run(targets, READ_10(0, 2), { inLength: 1000 })).kind, 'overrun');
  assert.equal((await run(targets, WRITE_10(0, 2), { out: new Uint8Array(600) })).kind, 'overrun');
  assert.equal((await run(targets, READ_10(0, 1))).kind, 'overrun', 'data-out buffer instead of data-in');
  assert.equal((await run(targets, WRITE_10(0, 1), { inLength: 512 })).kind, 'overrun', 'data-in buffer instead of data-out');
  const longer = good(await run(targets, READ_10(0, 1), { inLength: 4096 }));
  assert.equal(longer.length, 512, 'only the blocks asked for are transferred');
  assert.equal((await run(targets, [0x12, 0, 0, 0, 36, 0], { inLength: 10 })).kind, 'overrun', 'INQUIRY into a 10-byte buffer');
});

test('malformed CDBs: unknown opcodes, reserved bits, unsupported service actions, protection fields', async () => {
  const { targets } = await oneDisk(64);
  for (const op of [0x04, 0x15, 0x1e, 0x2f, 0x55, 0x7f, 0xc0, 0xff]) {
    const s = sense(await run(targets, [op], { inLength: 64 }));
    assert.deepEqual([s.key, s.asc, s.ascq], [5, 0x20, 0], `opcode ${op.toString(16)}: INVALID COMMAND OPERATION CODE`);
  }
  const rdprotect = sense(await run(targets, [0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], { inLength: 512 }));
  assert.equal(rdprotect.asc, 0x24);
  assert.equal(rdprotect.bytes[17], 1, 'points at byte 1');
  assert.equal(rdprotect.bytes[15] & 0x0f, 0x08 | 5, 'bit 5');
  assert.equal(sense(await run(targets, [0x00, 0, 0, 0, 0, 0x01])).asc, 0x24, 'NACA in the control byte');
  assert.equal(sense(await run(targets, [0x9e, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], { inLength: 32 })).asc, 0x24, 'unknown SERVICE ACTION IN(16) action');
  assert.equal(sense(await run(targets, [0x03, 0x01, 0, 0, 18, 0], { inLength: 18 })).asc, 0x24, 'descriptor-format sense asked for');
  assert.equal(sense(await run(targets, READ_10(0, 0xffff).map((b, i) => (i === 1 ? 0 : b)), { inLength: 0 })).asc, 0x21, 'count past a 64-block disk');
});

test('a read-only LUN answers writes with DATA PROTECT / WRITE PROTECTED and still reads', async () => {
  const { targets } = await oneDisk(64, { readOnly: true });
  for (const cdb of [WRITE_10(0, 1), WRITE_16(0, 1), [0x0a, 0, 0, 0, 1, 0], [0x41, 0x08, 0, 0, 0, 0, 0, 0, 1, 0], [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]]) {
    const s = sense(await run(targets, cdb, { out: new Uint8Array(512) }));
    assert.deepEqual([s.key, s.asc, s.ascq], [7, 0x27, 0]);
  }
  good(await run(targets, READ_10(0, 1), { inLength: 512 }));
  const mode = good(await run(targets, [0x1a, 0, 0x3f, 0, 255, 0], { inLength: 255 }));
  assert.equal(mode[2] & 0x80, 0x80, 'MODE SENSE: WP');
});

test('SYNCHRONIZE CACHE(10/16) flushes; a range past the end is refused', async () => {
  const backend = new MemoryBackend(64 * BLOCK_SIZE);
  let flushes = 0;
  const flush = backend.flush.bind(backend);
  backend.flush = async () => {
    flushes++;
    await flush();
  };
  const targets = new ScsiTargets();
  targets.add({ target: 0, lun: 0 }, new ScsiDisk({ backend, serial: 's' }));
  await run(targets, [0]);
  good(await run(targets, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
  good(await run(targets, [0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]));
  assert.equal(flushes, 2);
  assert.equal(sense(await run(targets, [0x35, 0, 0, 0, 0, 65, 0, 0, 0, 0])).asc, 0x21);
  good(await run(targets, [0x2a, 0x08, 0, 0, 0, 0, 0, 0, 1, 0], { out: new Uint8Array(512) }));
  assert.equal(flushes, 3, 'WRITE with FUA flushes before GOOD');
});

test('UNMAP and WRITE SAME with UNMAP zero the range; WRITE SAME without it repeats the block', async () => {
  const { targets, backend } = await oneDisk(64);
  backend.bytes.fill(0xee);
  const list = new Uint8Array(8 + 2 * 16);
  const v = new DataView(list.buffer);
  v.setUint16(0, list.length - 2);
  v.setUint16(2, 32);
  v.setUint32(8 + 4, 2); // LBA 2
  v.setUint32(8 + 8, 3); // 3 blocks
  v.setUint32(24 + 4, 10);
  v.setUint32(24 + 8, 1);
  good(await run(targets, [0x42, 0, 0, 0, 0, 0, 0, 0, list.length, 0], { out: list }));
  assert.ok(backend.bytes.subarray(2 * 512, 5 * 512).every((b) => b === 0));
  assert.ok(backend.bytes.subarray(10 * 512, 11 * 512).every((b) => b === 0));
  assert.equal(backend.bytes[5 * 512], 0xee, 'block 5 untouched');
  good(await run(targets, [0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 4, 0, 0], { out: new Uint8Array(512) }));
  assert.ok(backend.bytes.subarray(20 * 512, 24 * 512).every((b) => b === 0));
  const block = new Uint8Array(512).fill(0x5a);
  good(await run(targets, [0x41, 0, 0, 0, 0, 30, 0, 0, 3, 0], { out: block }));
  assert.ok(backend.bytes.subarray(30 * 512, 33 * 512).every((b) => b === 0x5a));
  assert.equal(backend.bytes[33 * 512], 0xee);
  assert.equal(sense(await run(targets, [0x41, 0, 0, 0, 0, 30, 0, 0, 0, 0], { out: block })).asc, 0x24, 'WSNZ: zero blocks refused');
  v.setUint32(8 + 4, 63);
  assert.equal(sense(await run(targets, [0x42, 0, 0, 0, 0, 0, 0, 0, list.length, 0], { out: list })).asc, 0x21, 'a descriptor past the end');
  assert.equal(sense(await run(targets, [0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0], { out: list })).asc, 0x1a, 'a parameter list shorter than its header');
  assert.equal((await run(targets, [0x42, 0, 0, 0, 0, 0, 0, 0, 200, 0], { out: list })).kind, 'overrun');
});

test('MODE SENSE(6/10): caching page with WCE, control page, block descriptor; saved values refused', async () => {
  const { targets } = await oneDisk(64);
  const six = good(await run(targets, [0x1a, 0, 0x08, 0, 255, 0], { inLength: 255 }));
  assert.equal(six[0], six.length - 1, 'mode data length');
  assert.equal(six[3], 8, 'one short block descriptor');
  assert.equal(be32(six, 4), 64, 'blocks');
  assert.equal(six[12], 0x08, 'caching page');
  assert.equal(six[14] & 0x04, 0x04, 'WCE');
  const ten = good(await run(targets, [0x5a, 0x08, 0x0a, 0, 0, 0, 0, 0, 255, 0], { inLength: 255 }));
  assert.equal(ten[7], 0, 'DBD: no block descriptor');
  assert.equal(ten[8], 0x0a, 'control page');
  const all = good(await run(targets, [0x1a, 0x08, 0x3f, 0, 255, 0], { inLength: 255 }));
  assert.deepEqual([all[4], all[4 + 20]], [0x08, 0x0a]);
  assert.equal(sense(await run(targets, [0x1a, 0, 0xc8, 0, 255, 0], { inLength: 255 })).asc, 0x39, 'saved values');
  assert.equal(sense(await run(targets, [0x1a, 0, 0x19, 0, 255, 0], { inLength: 255 })).asc, 0x24, 'a page not implemented');
});

test('REQUEST SENSE returns a pending unit attention, then NO SENSE; START STOP UNIT stops media access', async () => {
  const { targets, disk } = await oneDisk(64);
  disk.reset();
  const first = decodeSense(good(await run(targets, [0x03, 0, 0, 0, 18, 0], { inLength: 18 })));
  assert.deepEqual(first, { key: 6, asc: 0x29, ascq: 0, information: undefined });
  const none = decodeSense(good(await run(targets, [0x03, 0, 0, 0, 18, 0], { inLength: 18 })));
  assert.equal(none?.key, 0);
  good(await run(targets, [0x1b, 0, 0, 0, 0, 0]));
  assert.deepEqual({ ...sense(await run(targets, READ_10(0, 1), { inLength: 512 })), bytes: undefined }, { key: 2, asc: 4, ascq: 2, bytes: undefined });
  good(await run(targets, [0x1b, 0, 0, 0, 1, 0]));
  good(await run(targets, READ_10(0, 1), { inLength: 512 }));
  assert.equal(sense(await run(targets, [0x1b, 0, 0, 0, 0x10, 0])).asc, 0x24, 'power conditions are refused');
});

test('REPORT LUNS lists the target\'s LUNs; absent LUNs answer INQUIRY with qualifier 011b and 25/00 otherwise', async () => {
  const targets = new ScsiTargets();
  for (const lun of [0, 1, 300]) targets.add({ target: 0, lun }, new ScsiDisk({ backend: new MemoryBackend(8 * BLOCK_SIZE), serial: `s${lun}` }));
  targets.add({ target: 2, lun: 5 }, new ScsiDisk({ backend: new MemoryBackend(8 * BLOCK_SIZE), serial: 't2' }));
  const list = good(await run(targets, [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], { inLength: 256 }));
  assert.equal(be32(list, 0), 24);
  assert.deepEqual([...list.subarray(8, 10)], [0, 0]);
  assert.deepEqual([...list.subarray(16, 18)], [0, 1]);
  assert.deepEqual([...list.subarray(24, 26)], [0x41, 0x2c], 'LUN 300 in flat space');
  const other = good(await run(targets, [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], { inLength: 256, address: { target: 2, lun: 0 } }));
  assert.equal(be32(other, 0), 8, 'target 2 has one LUN, asked through a LUN it does not have');
  assert.equal(sense(await run(targets, [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], { inLength: 8 })).asc, 0x24, 'allocation length under 16');
  const absent = { target: 0, lun: 7 };
  assert.equal(good(await run(targets, [0x12, 0, 0, 0, 36, 0], { inLength: 36, address: absent }))[0], 0x7f);
  const s = sense(await run(targets, [0x00], { address: absent }));
  assert.deepEqual([s.key, s.asc, s.ascq], [5, 0x25, 0]);
  assert.equal(decodeSense(good(await run(targets, [0x03, 0, 0, 0, 18, 0], { inLength: 18, address: absent })))?.asc, 0x25);
});

test('REPORT SUPPORTED OPERATION CODES lists every command and the usage data of one', async () => {
  const { targets } = await oneDisk(64);
  const all = good(await run(targets, [0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], { inLength: 1024 }));
  const count = be32(all, 0) / 8;
  const opcodes = Array.from({ length: count }, (_, i) => all[4 + i * 8]);
  for (const op of [0x00, 0x03, 0x12, 0x1a, 0x25, 0x28, 0x2a, 0x35, 0x41, 0x42, 0x5a, 0x88, 0x8a, 0x93, 0x9e, 0xa0, 0xa3]) assert.ok(opcodes.includes(op), `opcode ${op.toString(16)}`);
  const one = good(await run(targets, [0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 0, 64, 0, 0], { inLength: 64 }));
  assert.equal(one[1] & 0x07, 3, 'supported');
  assert.equal(one[3], 10, 'CDB size');
  assert.deepEqual([one[4], one[5]], [0x28, 0x18]);
  const missing = good(await run(targets, [0xa3, 0x0c, 0x01, 0x2f, 0, 0, 0, 0, 0, 64, 0, 0], { inLength: 64 }));
  assert.equal(missing[1] & 0x07, 1, 'VERIFY(10): not supported');
  const sa = good(await run(targets, [0xa3, 0x0c, 0x02, 0x9e, 0, 0x10, 0, 0, 0, 64, 0, 0], { inLength: 64 }));
  assert.equal(sa[3], 16);
  assert.equal(sense(await run(targets, [0xa3, 0x0c, 0x01, 0x9e, 0, 0, 0, 0, 0, 64, 0, 0], { inLength: 64 })).asc, 0x24, 'option 1 on an opcode with service actions');
});

test('a failing backend is a MEDIUM ERROR naming the LBA', async () => {
  const backend = new MemoryBackend(64 * BLOCK_SIZE);
  backend.read = () => Promise.reject(new Error('EIO'));
  backend.write = () => Promise.reject(new Error('EIO'));
  const targets = new ScsiTargets();
  targets.add({ target: 0, lun: 0 }, new ScsiDisk({ backend, serial: 's' }));
  await run(targets, [0]);
  const r = await run(targets, READ_10(9, 1), { inLength: 512 });
  const rs = sense(r);
  assert.deepEqual([rs.key, rs.asc], [3, 0x11]);
  assert.equal(decodeSense(rs.bytes)?.information, 9);
  const ws = sense(await run(targets, WRITE_10(3, 1), { out: new Uint8Array(512) }));
  assert.deepEqual([ws.key, ws.asc], [3, 0x0c]);
});

test('a capacity change is reported once as 2A/09 and READ CAPACITY answers the new size', async () => {
  const { targets, disk } = await oneDisk(64);
  disk.replaceBackend(new MemoryBackend(128 * BLOCK_SIZE));
  const ua = sense(await run(targets, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], { inLength: 8 }));
  assert.deepEqual([ua.key, ua.asc, ua.ascq], [Sense.CAPACITY_CHANGED.key, 0x2a, 0x09]);
  assert.equal(be32(good(await run(targets, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], { inLength: 8 })), 0), 127);
});
