/**
 * A device that claims more queues than a driver wants (docs/security.md Threat 5): the transport's
 * queue count, blk and scsi num_queues, console max_nr_ports and net max_virtqueue_pairs at the
 * top of their range. Each driver opens with a bounded number of rings and works.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlkDevice } from '../../../src/devices/blk/device.ts';
import { BlkDriver } from '../../../src/devices/blk/driver.ts';
import { BLK_CONFIG } from '../../../src/devices/blk/wire.ts';
import { ConsoleDevice } from '../../../src/devices/console/device.ts';
import { ConsoleDriver, MAX_DRIVER_PORTS } from '../../../src/devices/console/driver.ts';
import { CONSOLE_CONFIG } from '../../../src/devices/console/wire.ts';
import { L2Switch } from '../../../src/devices/net/switch.ts';
import { ScsiDevice } from '../../../src/devices/scsi/device.ts';
import { BLOCK_SIZE, ScsiDisk } from '../../../src/devices/scsi/disk.ts';
import { ScsiInitiator } from '../../../src/devices/scsi/initiator.ts';
import { ScsiTargets } from '../../../src/devices/scsi/target.ts';
import { SCSI_CONFIG } from '../../../src/devices/scsi/wire.ts';
import { MemoryBackend } from '../../../src/storage/memory-backend.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DEFAULT_MAX_REQUEST_QUEUES } from '../../../src/virtio/driver-core.ts';
import type { DriverTransport } from '../../../src/virtio/driver.ts';
import { MAC_A, MAC_B, frame, nextFrame, station } from '../net/fixture.ts';

/** `transport` with a device that claims `numQueues` queues and, optionally, other configuration bytes at `offset`. */
function claiming(transport: DriverTransport, numQueues: number, patch?: { offset: number; bytes: Uint8Array }): DriverTransport {
  return new Proxy(transport, {
    get(target, prop) {
      if (prop === 'numQueues') return async () => numQueues;
      if (prop === 'readConfig' && patch !== undefined) {
        return async (offset: number, length: number) => {
          const data = await target.readConfig(offset, length);
          for (let i = 0; i < patch.bytes.length; i++) {
            const at = patch.offset + i - offset;
            if (at >= 0 && at < data.length) data[at] = patch.bytes[i];
          }
          return data;
        };
      }
      const value: unknown = Reflect.get(target, prop);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

const le = (value: number, width: number): Uint8Array => {
  const out = new Uint8Array(width);
  for (let i = 0; i < width; i++) out[i] = (value / 2 ** (8 * i)) & 0xff;
  return out;
};

test('blk: a device with 65535 request queues (num_queues 65535) gets a working driver on a few rings', async () => {
  const backend = new MemoryBackend(64 * 512);
  const { transport } = createLoopback(new BlkDevice({ backend, queues: 0xffff }), { memoryBytes: 1 << 20 });
  const blk = await BlkDriver.open(transport);
  assert.equal(blk.queues, DEFAULT_MAX_REQUEST_QUEUES);
  assert.equal(blk.core.queueCount, DEFAULT_MAX_REQUEST_QUEUES);
  const data = new Uint8Array(4096).map((_, i) => i * 3);
  await blk.write(8, data);
  assert.deepEqual(await blk.read(8, data.length), data);
  await blk.close();

  const asked = await BlkDriver.open(transport, { queues: 2 });
  assert.equal(asked.core.queueCount, 2, 'a caller may ask for fewer');
  await asked.close();
});

test('blk: a transport claiming 65535 queues with num_queues 65535 or 0 sets up what the driver wants, 0 reading as 1', async () => {
  const backend = new MemoryBackend(64 * 512);
  const device = new BlkDevice({ backend, queues: 2 });
  const { transport } = createLoopback(device, { memoryBytes: 1 << 20 });
  // Without MQ only requestq1 exists, whatever the transport says (§5.2.2).
  const single = await BlkDriver.open(claiming(createLoopback(new BlkDevice({ backend }), { memoryBytes: 1 << 20 }).transport, 0xffff));
  assert.equal(single.core.queueCount, 1);
  await single.close();
  const zero = await BlkDriver.open(claiming(transport, 0xffff, { offset: BLK_CONFIG.offset.numQueues, bytes: le(0, 2) }));
  assert.equal(zero.core.queueCount, 1);
  await zero.write(0, new Uint8Array(512).fill(7));
  assert.deepEqual(await zero.read(0, 512), new Uint8Array(512).fill(7));
  await zero.close();
});

test('scsi: num_queues 65535 and 65537 queues claimed: the initiator uses a few request queues and moves data', async () => {
  const targets = new ScsiTargets();
  targets.add({ target: 0, lun: 0 }, new ScsiDisk({ backend: new MemoryBackend(32 * BLOCK_SIZE), serial: 's0' }));
  const { transport } = createLoopback(new ScsiDevice({ targets, queues: 1024 }), { memoryBytes: 4 << 20 });
  const init = await ScsiInitiator.open(claiming(transport, 0xffff + 2, { offset: SCSI_CONFIG.offset.numQueues, bytes: le(0xffff, 4) }), { maxTarget: 1 });
  assert.equal(init.driver.requestQueues, DEFAULT_MAX_REQUEST_QUEUES);
  assert.equal(init.driver.core.queueCount, 2 + DEFAULT_MAX_REQUEST_QUEUES);
  const [lun] = init.list();
  const data = new Uint8Array(2 * BLOCK_SIZE).fill(0x5a);
  await lun.write(3, data);
  assert.deepEqual(await lun.read(3, data.length), data);
  await init.close();
});

test('console: max_nr_ports 0xffffffff over 65535 queues sets up queues for a bounded number of ports', async () => {
  const device = new ConsoleDevice([{ id: 0, console: true }, { id: 1, name: 'org.paravirt.a' }], { maxPorts: 511 });
  const { transport } = createLoopback(device, { memoryBytes: 4 << 20 });
  const driver = await ConsoleDriver.open(claiming(transport, 0xffff, { offset: CONSOLE_CONFIG.offset.maxNrPorts, bytes: le(0xffff_ffff, 4) }));
  assert.equal(driver.maxPorts, MAX_DRIVER_PORTS);
  assert.equal(driver.core.queueCount, 2 * (MAX_DRIVER_PORTS + 1));
  const a = await driver.port('org.paravirt.a');
  assert.equal(a.id, 1);
  await driver.close();
});

test('net: max_virtqueue_pairs 0x8000 gets a driver on a few pairs, the controlq at 2N, and multiqueue works', async () => {
  const sw = new L2Switch();
  const a = await station(sw.createPort(), { mac: MAC_A, queuePairs: 0x8000 });
  const b = await station(sw.createPort(), { mac: MAC_B });
  try {
    assert.equal(a.drv.maxQueuePairs, DEFAULT_MAX_REQUEST_QUEUES);
    assert.equal(a.drv.core.queueCount, 2 * DEFAULT_MAX_REQUEST_QUEUES + 1);
    await a.drv.setQueuePairs(DEFAULT_MAX_REQUEST_QUEUES);
    assert.equal(a.dev.queuePairs, DEFAULT_MAX_REQUEST_QUEUES);
    const out = frame(MAC_B, MAC_A, 90);
    await a.drv.send(out, { pair: DEFAULT_MAX_REQUEST_QUEUES - 1 });
    assert.deepEqual((await nextFrame(b.drv)).frame, out);
  } finally {
    await a.drv.close();
    await b.drv.close();
  }
});
