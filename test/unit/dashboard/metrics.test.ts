/** The Prometheus text exposition of device counters, and browser key codes as evdev codes. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KEY_CODES } from '../../../src/devices/input/keys.ts';
import { evdevKey } from '../../../src/dashboard/browser-keys.ts';
import { prometheusText, snakeCase } from '../../../src/dashboard/metrics.ts';
import { DeviceCounters } from '../../../src/virtio/counters.ts';

test('metrics: every queue counter and fill gauge per device and queue, device counts untyped, label values escaped', () => {
  const blk = new DeviceCounters(2, () => ({ flushes: 3, droppedNoBuffer: 1 }));
  blk.queue(1).requests = 7;
  blk.queue(1).readBytes = 4096;
  // Queue 1 runs with 3 of its 128 entries in flight; queue 0 does not run.
  blk.observe({ liveQueue: (i) => (i === 1 ? { inFlight: 3, size: 128 } : undefined) });
  const odd = new DeviceCounters(1, () => ({ notANumber: Number.NaN }));
  const text = prometheusText([
    { id: 'blk0', type: 'blk', counters: blk.snapshot() },
    { id: 'we"ird\\id\n', type: 'rng', counters: odd.snapshot() },
  ]);
  const lines = text.split('\n');
  assert.ok(text.endsWith('\n'));
  assert.ok(lines.includes('# TYPE paravirt_queue_requests_total counter'));
  assert.ok(lines.includes('paravirt_queue_requests_total{device="blk0",type="blk",queue="0"} 0'));
  assert.ok(lines.includes('paravirt_queue_requests_total{device="blk0",type="blk",queue="1"} 7'));
  assert.ok(lines.includes('paravirt_queue_read_bytes_total{device="blk0",type="blk",queue="1"} 4096'));
  assert.ok(lines.includes('paravirt_queue_notifications_total{device="we\\"ird\\\\id\\n",type="rng",queue="0"} 0'));
  assert.ok(lines.includes('# TYPE paravirt_queue_in_flight gauge'));
  assert.ok(lines.includes('# TYPE paravirt_queue_size gauge'));
  assert.ok(lines.includes('paravirt_queue_in_flight{device="blk0",type="blk",queue="1"} 3'));
  assert.ok(lines.includes('paravirt_queue_size{device="blk0",type="blk",queue="1"} 128'));
  assert.ok(lines.includes('paravirt_queue_in_flight{device="blk0",type="blk",queue="0"} 0'));
  assert.ok(lines.includes('paravirt_queue_size{device="blk0",type="blk",queue="0"} 0'));
  assert.ok(lines.includes('paravirt_queue_size{device="we\\"ird\\\\id\\n",type="rng",queue="0"} 0'));
  assert.ok(lines.includes('# TYPE paravirt_blk_flushes untyped'));
  assert.ok(lines.includes('paravirt_blk_dropped_no_buffer{device="blk0"} 1'));
  assert.ok(!text.includes('not_a_number'), 'a count that is not a number is left out');
  // Each family's TYPE line comes once, before its samples.
  for (const family of ['paravirt_queue_errors_total', 'paravirt_queue_in_flight', 'paravirt_blk_flushes']) {
    assert.equal(lines.filter((l) => l.startsWith(`# TYPE ${family} `)).length, 1);
    assert.ok(lines.findIndex((l) => l.startsWith(`# TYPE ${family} `)) < lines.findIndex((l) => l.startsWith(`${family}{`)));
  }
  assert.equal(snakeCase('reportedKeptForPoison'), 'reported_kept_for_poison');
});

test('browser keys: KeyboardEvent.code names map to the same physical key on the guest', () => {
  assert.equal(evdevKey('KeyA'), KEY_CODES.a);
  assert.equal(evdevKey('Digit0'), KEY_CODES['0']);
  assert.equal(evdevKey('F12'), KEY_CODES.f12);
  assert.equal(evdevKey('ShiftLeft'), KEY_CODES.leftshift);
  assert.equal(evdevKey('Period'), KEY_CODES.dot);
  assert.equal(evdevKey('ArrowDown'), KEY_CODES.down);
  for (const unknown of ['', 'Keya', 'F13', 'Digit10', 'constructor', 'toString', 'Fn']) assert.equal(evdevKey(unknown), undefined, unknown);
});
