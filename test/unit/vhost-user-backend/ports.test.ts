/**
 * The back-end's OS side against descriptors a front-end might send: memory at any offset,
 * files too short to back a region, kick "eventfds" that are something else.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { EventFd } from '../../../src/native/eventfd.ts';
import { closeFd } from '../../../src/native/fd.ts';
import { Mapping, PAGE_SIZE } from '../../../src/native/mapping.ts';
import { createMemfd } from '../../../src/native/memfd.ts';
import { socketPair } from '../../../src/native/unix-socket.ts';
import { createBackendPorts, mapRegion } from '../../../src/transports/vhost-user/backend-ports.ts';

const log = pino({ level: 'silent' });

test('a region at an offset that is not page-aligned maps the right bytes', () => {
  const fd = createMemfd('ram', 3 * PAGE_SIZE);
  const whole = Mapping.shared(fd, 3 * PAGE_SIZE);
  whole.bytes[PAGE_SIZE + 0x10] = 0x5a;
  const region = mapRegion(fd, PAGE_SIZE + 0x10, 0x100);
  assert.equal(region.bytes.length, 0x100);
  assert.equal(region.bytes[0], 0x5a);
  region.bytes[1] = 0x77;
  assert.equal(whole.bytes[PAGE_SIZE + 0x11], 0x77, 'the mapping is shared');
  region.unmap();
  whole.unmap();
  closeFd(fd);
});

test('a file shorter than the region, or no file at all, is refused before mapping', () => {
  const fd = createMemfd('short', PAGE_SIZE);
  assert.throws(() => mapRegion(fd, 0, 2 * PAGE_SIZE), /has 4096 bytes, fewer than the region's end at 8192/);
  assert.throws(() => mapRegion(fd, PAGE_SIZE, 1), /fewer than the region's end/);
  closeFd(fd);
  const e = EventFd.create();
  assert.throws(() => mapRegion(e.fd, 0, PAGE_SIZE), /not a file that can back guest memory/);
  e.close();
});

test('a kick eventfd calls back once per wake-up and consumes the counter', async () => {
  const ports = createBackendPorts(log);
  const kick = EventFd.create();
  let kicks = 0;
  let kicked!: () => void;
  let next = new Promise<void>((resolve) => (kicked = resolve));
  const stop = ports.watchKick(kick.fd, () => {
    kicks++;
    kicked();
  });
  kick.signal(3n);
  await next;
  assert.equal(kicks, 1);
  next = new Promise<void>((resolve) => (kicked = resolve));
  kick.signal();
  await next;
  assert.equal(kicks, 2);
  stop();
  kick.close();
});

test('a "kick fd" that is a socket with a short write stops being watched instead of throwing', async () => {
  let warned!: (line: string) => void;
  const warning = new Promise<string>((resolve) => (warned = resolve));
  const ports = createBackendPorts(pino({ level: 'warn' }, { write: (line: string) => warned(line) }));
  const [a, b] = socketPair();
  let kicks = 0;
  ports.watchKick(b.fd, () => kicks++);
  // 3 bytes where an eventfd read takes 8: the read fails inside the watcher callback.
  a.send(new Uint8Array([1, 2, 3]));
  assert.match(await warning, /kick fd unusable/);
  assert.equal(kicks, 0);
  a.close();
  b.close();
});

test('signalling a descriptor that is gone logs instead of throwing', () => {
  const ports = createBackendPorts(log);
  const e = EventFd.create();
  const fd = e.fd;
  e.close();
  assert.doesNotThrow(() => ports.signal(fd));
});
