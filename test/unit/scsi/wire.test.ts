/** The virtio-scsi wire format (§5.6): LUN addresses, headers, events and the configuration layout. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  COMMAND_HEADER_SIZE,
  SCSI_CONFIG,
  decodeCommandHeader,
  decodeCommandResponse,
  decodeEvent,
  decodeLun,
  encodeCommandHeader,
  encodeCommandResponse,
  encodeEvent,
  encodeLun,
  EventType,
  ResetReason,
} from '../../../src/devices/scsi/wire.ts';

test('LUN fields: flat and peripheral single-level addresses decode; anything else is refused', () => {
  assert.deepEqual(decodeLun(Uint8Array.of(1, 3, 0x40, 5, 0, 0, 0, 0)), { target: 3, lun: 5 });
  assert.deepEqual(decodeLun(Uint8Array.of(1, 0, 0x00, 7, 0, 0, 0, 0)), { target: 0, lun: 7 }, 'peripheral, bus 0');
  assert.deepEqual(decodeLun(Uint8Array.of(1, 255, 0x7f, 0xff, 0, 0, 0, 0)), { target: 255, lun: 16383 });
  assert.equal(decodeLun(Uint8Array.of(0, 0, 0x40, 0, 0, 0, 0, 0)), undefined, 'lun[0] must be 1');
  assert.equal(decodeLun(Uint8Array.of(1, 0, 0x01, 0, 0, 0, 0, 0)), undefined, 'peripheral with a bus number');
  assert.equal(decodeLun(Uint8Array.of(1, 0, 0x80, 0, 0, 0, 0, 0)), undefined, 'logical unit addressing');
  assert.equal(decodeLun(Uint8Array.of(1, 0, 0xc1, 0x01, 0, 0, 0, 0)), undefined, 'well-known LUN');
  assert.equal(decodeLun(Uint8Array.of(1, 0, 0x40, 0, 0, 1, 0, 0)), undefined, 'a second level');
  assert.deepEqual(decodeLun(encodeLun({ target: 9, lun: 300 })), { target: 9, lun: 300 });
});

test('events carry LUNs as REPORT LUNS does, which is how Linux reads them', () => {
  const low = decodeEvent(encodeEvent({ event: EventType.TRANSPORT_RESET, address: { target: 0, lun: 5 }, reason: ResetReason.RESCAN }));
  assert.deepEqual([...low.lun.subarray(0, 4)], [1, 0, 0, 5]);
  assert.equal(low.reason, ResetReason.RESCAN);
  const high = decodeEvent(encodeEvent({ event: EventType.PARAM_CHANGE, address: { target: 2, lun: 300 }, reason: 0x092a }));
  assert.deepEqual([...high.lun.subarray(0, 4)], [1, 2, 0x41, 0x2c]);
  assert.deepEqual(decodeLun(high.lun), { target: 2, lun: 300 });
});

test('command header and response round-trip; the configuration space is 36 bytes', () => {
  const cdb = new Uint8Array(32);
  cdb.set([0x28, 0, 1, 2, 3, 4]);
  const bytes = encodeCommandHeader({ lun: encodeLun({ target: 1, lun: 2 }), id: 0x1122334455667788n, taskAttr: 1, prio: 2, crn: 3, cdb }, 32);
  assert.equal(bytes.length, COMMAND_HEADER_SIZE + 32);
  const h = decodeCommandHeader(bytes, 32);
  assert.equal(h.id, 0x1122334455667788n);
  assert.deepEqual([h.taskAttr, h.prio, h.crn], [1, 2, 3]);
  assert.deepEqual(h.cdb, cdb);
  const resp = new Uint8Array(12 + 96);
  encodeCommandResponse({ senseLen: 18, residual: 512, statusQualifier: 0, status: 2, response: 0, sense: new Uint8Array(200).fill(9) }, resp);
  const r = decodeCommandResponse(resp);
  assert.deepEqual([r.senseLen, r.residual, r.status, r.response, r.sense.length], [18, 512, 2, 0, 18]);
  assert.equal(SCSI_CONFIG.size, 36);
  assert.equal(SCSI_CONFIG.offset.maxLun, 32);
});
