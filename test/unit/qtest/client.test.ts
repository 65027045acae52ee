import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import fc from 'fast-check';
import { QtestClient, QtestClosedError, QtestCommandError, TRANSFER_CHUNK } from '../../../src/transports/qtest/client.ts';
import type { InterruptEvent } from '../../../src/transports/qtest/guest-bus.ts';
import { QtestProtocolError } from '../../../src/transports/qtest/reply.ts';

/** The server end of a fake connection: sees request lines, answers with whatever the test says. */
class FakeServer {
  readonly toClient = new PassThrough();
  readonly fromClient = new PassThrough();
  readonly requests: string[] = [];
  private partial = '';
  private waiting: (() => void)[] = [];

  constructor(private readonly answer: (request: string) => string | undefined = () => undefined) {
    this.fromClient.setEncoding('latin1');
    this.fromClient.on('data', (chunk: string) => {
      this.partial += chunk;
      let nl: number;
      while ((nl = this.partial.indexOf('\n')) >= 0) {
        const line = this.partial.slice(0, nl);
        this.partial = this.partial.slice(nl + 1);
        this.requests.push(line);
        const reply = this.answer(line);
        if (reply !== undefined) this.send(`${reply}\n`);
        for (const wake of this.waiting.splice(0)) wake();
      }
    });
  }

  client(): QtestClient {
    return new QtestClient(this.toClient, this.fromClient);
  }

  send(text: string): void {
    this.toClient.write(text);
  }

  /** Resolves once `n` requests have arrived. */
  async received(n: number): Promise<void> {
    while (this.requests.length < n) await new Promise<void>((wake) => this.waiting.push(wake));
  }
}

/** A server with 1 MiB of little-endian memory and 64 KiB of ports, answering like QEMU does. */
function memoryServer(): FakeServer {
  const mem = Buffer.alloc(1 << 20);
  const ports = new Map<number, number>();
  const width: Record<string, number> = { b: 1, w: 2, l: 4, q: 8 };
  return new FakeServer((line) => {
    const [op, a, b, c] = line.split(' ');
    const addr = Number(a);
    if (op === 'b64read') return `OK ${mem.subarray(addr, addr + Number(b)).toString('base64')}`;
    if (op === 'b64write') {
      Buffer.from(c, 'base64').copy(mem, addr);
      return 'OK';
    }
    if (op === 'memset') {
      mem.fill(Number(c), addr, addr + Number(b));
      return 'OK';
    }
    const size = width[op.at(-1) ?? ''];
    if (op.startsWith('read')) return `OK 0x${mem.readBigUInt64LE(addr).toString(16).slice(-size * 2).padStart(16, '0')}`;
    if (op.startsWith('write')) {
      const bytes = Buffer.alloc(8);
      bytes.writeBigUInt64LE(BigInt(b));
      bytes.copy(mem, addr, 0, size);
      return 'OK';
    }
    if (op.startsWith('out')) {
      ports.set(addr, Number(b));
      return 'OK';
    }
    if (op.startsWith('in')) return `OK 0x${(ports.get(addr) ?? 0xffffffff).toString(16).padStart(4, '0')}`;
    return `FAIL Unknown command '${op}'`;
  });
}

test('each typed call writes the request QEMU expects and decodes its answer', async () => {
  const server = new FakeServer((line) => {
    if (line === 'inl 0xcfc') return 'OK 0x10421af4';
    if (line === 'readq 0x1000') return 'OK 0xfedcba9876543210';
    if (line === 'readw 0x1000') return 'OK 0x000000000000beef';
    if (line === 'b64read 0x20 0x3') return 'OK AQID';
    if (line === 'clock_step') return 'OK 1000000';
    if (line === 'endianness') return 'OK little';
    return 'OK';
  });
  const bus = server.client();
  await bus.outU32(0xcf8, 0x80000800);
  assert.equal(await bus.inU32(0xcfc), 0x10421af4);
  assert.equal(await bus.readU64(0x1000), 0xfedcba9876543210n);
  assert.equal(await bus.readU16(0x1000), 0xbeef);
  assert.deepEqual([...(await bus.read(0x20, 3))], [1, 2, 3]);
  await bus.write(0x40, new Uint8Array([0xff, 0, 0x10]));
  await bus.writeU64(0x48, 0xffff_ffff_ffff_ffffn);
  await bus.fill(0x50, 16, 0xaa);
  await bus.interceptIrqIn('ioapic');
  assert.equal(await bus.clockStep(), 1000000n);
  assert.equal(await bus.endianness(), 'little');
  assert.deepEqual(server.requests, [
    'outl 0xcf8 0x80000800',
    'inl 0xcfc',
    'readq 0x1000',
    'readw 0x1000',
    'b64read 0x20 0x3',
    'b64write 0x40 0x3 /wAQ',
    'writeq 0x48 0xffffffffffffffff',
    'memset 0x50 0x10 0xaa',
    'irq_intercept_in ioapic',
    'clock_step',
    'endianness',
  ]);
});

test('pipelined requests settle in order, after every interrupt line the server sent before their answer', async () => {
  const server = new FakeServer();
  const bus = server.client();
  const events: InterruptEvent[] = [];
  bus.onInterrupt((e) => events.push(e));
  const settled: string[] = [];
  const first = bus.readU8(0x10).then((v) => settled.push(`first ${v}`));
  const second = bus.writeU32(0x14, 1).then(() => {
    assert.ok(events.length >= 1, 'the raise came before the second answer');
    settled.push('second');
  });
  const third = bus.readU8(0x18).then((v) => {
    assert.equal(events.length, 2, 'the lower came before the third answer');
    settled.push(`third ${v}`);
  });
  await server.received(3);
  server.send('OK 0x01\nIRQ rai');
  server.send('se 11\nOK\nIRQ lower 11\nOK 0x03\n');
  await Promise.all([first, second, third]);
  assert.deepEqual(settled, ['first 1', 'second', 'third 3']);
  assert.deepEqual(events, [
    { line: 11, raised: true },
    { line: 11, raised: false },
  ]);
  assert.equal(bus.interruptLevel(11), false);
  assert.equal(bus.interruptLevel(5), false, 'a line never reported is low');
});

test('a listener that unsubscribes hears nothing more, and the level is tracked all the same', async () => {
  const server = new FakeServer((line) => (line === 'readb 0x0' ? 'IRQ raise 3\nOK 0x00' : undefined));
  const bus = server.client();
  const events: InterruptEvent[] = [];
  const stop = bus.onInterrupt((e) => events.push(e));
  stop();
  await bus.readU8(0);
  assert.deepEqual(events, []);
  assert.equal(bus.interruptLevel(3), true);
});

test('a refusal becomes a QtestCommandError naming the request, and the stream stays usable', async () => {
  const server = new FakeServer((line) => (line.startsWith('irq') ? 'FAIL Unknown device' : line.startsWith('write ') ? 'ERR invalid argument size' : 'OK 0x7'));
  const bus = server.client();
  await assert.rejects(bus.interceptIrqIn('/machine/nothing'), (e: unknown) => {
    assert.ok(e instanceof QtestCommandError);
    assert.equal(e.command, 'irq_intercept_in /machine/nothing');
    assert.equal(e.reason, 'Unknown device');
    return true;
  });
  await assert.rejects(bus.command('write', '0x0', '0x1', '0x'), { name: 'QtestCommandError', reason: 'invalid argument size' });
  assert.equal(await bus.inU8(0x80), 7);
  assert.equal(bus.open, true);
});

test('arguments QEMU would abort on are refused before anything is sent', async () => {
  const server = new FakeServer(() => 'OK');
  const bus = server.client();
  await assert.rejects(bus.outU8(0x10000, 0), /I\/O port 65536 is outside/);
  await assert.rejects(bus.outU8(-1, 0), RangeError);
  await assert.rejects(bus.outU16(0x60, 0x10000), /does not fit in 16 bits/);
  await assert.rejects(bus.writeU32(0x0, -1), RangeError);
  await assert.rejects(bus.writeU32(0x0, 1.5), RangeError);
  await assert.rejects(bus.writeU64(0x0, 1n << 64n), /64 bits/);
  await assert.rejects(bus.readU32(-4), /guest address -4/);
  await assert.rejects(bus.readU32(2 ** 53), RangeError);
  await assert.rejects(bus.read(2 ** 53 - 2, 4), RangeError);
  await assert.rejects(bus.fill(0, 4, 256), RangeError);
  await assert.rejects(bus.interceptIrqIn('bad path'), /without spaces/);
  await assert.rejects(bus.interceptIrqIn('line\nbreak'), RangeError);
  await assert.rejects(bus.interceptIrqIn(''), RangeError);
  await assert.rejects(bus.setIrqIn('ioapic', 'unnamed-gpio-in', -1, 1), RangeError);
  await assert.rejects(bus.clockStep(-1n), RangeError);
  await assert.rejects(bus.command(), RangeError);
  assert.deepEqual(server.requests, []);
  assert.deepEqual([...(await bus.read(0x100, 0))], [], 'an empty read needs no request (QEMU asserts on one)');
  await bus.write(0x100, new Uint8Array(0));
  assert.deepEqual(server.requests, []);
});

test('the end of the stream fails outstanding and later requests with QtestClosedError', async () => {
  const server = new FakeServer();
  const bus = server.client();
  const outstanding = bus.readU32(0);
  await server.received(1);
  server.toClient.end();
  await assert.rejects(outstanding, QtestClosedError);
  await assert.rejects(bus.readU32(0), /server ended the stream/);
  assert.equal(bus.open, false);
});

test('close() fails outstanding requests but leaves the caller\'s streams alone', async () => {
  const server = new FakeServer();
  const bus = server.client();
  const outstanding = bus.inU8(0x61);
  bus.close();
  await assert.rejects(outstanding, /closed by the client/);
  assert.equal(server.toClient.destroyed, false);
  assert.equal(server.fromClient.destroyed, false);
});

test('a write error on the request stream closes the client instead of crashing', async () => {
  const server = new FakeServer();
  const bus = server.client();
  const outstanding = bus.inU8(0x61);
  server.fromClient.destroy(new Error('EPIPE'));
  await assert.rejects(outstanding, /EPIPE/);
  await assert.rejects(bus.inU8(0x61), QtestClosedError);
});

for (const [what, text] of [
  ['an answer nobody asked for', 'OK\n'],
  ['a line outside the protocol', 'hello\n'],
  ['a malformed interrupt line', 'IRQ raise eleven\n'],
  ['an endless line', 'O'.repeat(5 * TRANSFER_CHUNK)],
] as const) {
  test(`${what} is a protocol violation that stops the client`, async () => {
    const server = new FakeServer();
    const bus = server.client();
    const outstanding = what === 'an answer nobody asked for' ? undefined : bus.readU8(0);
    server.send(text);
    if (outstanding) await assert.rejects(outstanding, QtestProtocolError);
    await assert.rejects(bus.readU8(0), QtestClosedError);
  });
}

test('answers that do not fit the request are protocol errors', async () => {
  const server = new FakeServer((line) => (line.startsWith('inb') ? 'OK 0x1ff' : line.startsWith('b64read') ? 'OK AQID' : 'OK nonsense'));
  const bus = server.client();
  await assert.rejects(bus.inU8(0x60), /wider than 8 bits/);
  await assert.rejects(bus.read(0, 4), /b64read of 4 bytes answered 3/);
  await assert.rejects(bus.readU32(0), /not one hex value/);
});

test('transfers larger than one chunk are split into pipelined requests and reassembled', async () => {
  const server = memoryServer();
  const bus = server.client();
  const data = new Uint8Array(2 * TRANSFER_CHUNK + 17).map((_, i) => (i * 7) & 0xff);
  await bus.write(0x3000, data);
  assert.equal(server.requests.length, 3);
  assert.deepEqual(await bus.read(0x3000, data.length), data);
  assert.equal(server.requests.length, 6);
});

test('property: whatever is written through any access width reads back the same through any other', async () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('bytes' as const), addr: fc.nat(4096), data: fc.uint8Array({ maxLength: 64 }) }),
    fc.record({ kind: fc.constant('u16' as const), addr: fc.nat(4096), value: fc.nat(0xffff) }),
    fc.record({ kind: fc.constant('u32' as const), addr: fc.nat(4096), value: fc.nat(0xffffffff) }),
    fc.record({ kind: fc.constant('u64' as const), addr: fc.nat(4096), value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
    fc.record({ kind: fc.constant('fill' as const), addr: fc.nat(4096), length: fc.nat(64), value: fc.nat(255) }),
  );
  await fc.assert(
    fc.asyncProperty(fc.array(op, { maxLength: 12 }), async (ops) => {
      const bus = memoryServer().client();
      const model = Buffer.alloc(4200);
      // Issue every write without awaiting: pipelining must not reorder them.
      const writes: Promise<void>[] = [];
      for (const o of ops) {
        if (o.kind === 'bytes') {
          writes.push(bus.write(o.addr, o.data));
          model.set(o.data, o.addr);
        } else if (o.kind === 'u16') {
          writes.push(bus.writeU16(o.addr, o.value));
          model.writeUInt16LE(o.value, o.addr);
        } else if (o.kind === 'u32') {
          writes.push(bus.writeU32(o.addr, o.value));
          model.writeUInt32LE(o.value, o.addr);
        } else if (o.kind === 'u64') {
          writes.push(bus.writeU64(o.addr, o.value));
          model.writeBigUInt64LE(o.value, o.addr);
        } else {
          writes.push(bus.fill(o.addr, o.length, o.value));
          model.fill(o.value, o.addr, o.addr + o.length);
        }
      }
      await Promise.all(writes);
      assert.deepEqual(Buffer.from(await bus.read(0, model.length)), model);
      for (const o of ops) {
        assert.equal(await bus.readU8(o.addr), model[o.addr]);
        assert.equal(await bus.readU16(o.addr), model.readUInt16LE(o.addr));
        assert.equal(await bus.readU32(o.addr), model.readUInt32LE(o.addr));
        assert.equal(await bus.readU64(o.addr), model.readBigUInt64LE(o.addr));
      }
    }),
    { numRuns: 60 },
  );
});

test('property: however the answers are cut into chunks, each request gets its own answer', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.nat(0xffff), { minLength: 1, maxLength: 20 }), fc.array(fc.nat(40), { maxLength: 10 }), async (values, cuts) => {
      const server = new FakeServer();
      const bus = server.client();
      const answers = Promise.all(values.map((_, i) => bus.inU16(i)));
      await server.received(values.length);
      const text = values.map((v, i) => `${i % 2 ? 'IRQ raise 4\n' : ''}OK 0x${v.toString(16).padStart(4, '0')}\n`).join('');
      let at = 0;
      for (const cut of cuts) {
        server.send(text.slice(at, at + cut));
        at = Math.min(text.length, at + cut);
      }
      server.send(text.slice(at));
      assert.deepEqual(await answers, values);
    }),
    { numRuns: 100 },
  );
});
