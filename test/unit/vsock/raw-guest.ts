/** A driver of raw vsock packets for unit tests: sends any header, collects what the device puts in rx buffers. */
import type { VsockDevice } from '../../../src/devices/vsock/device.ts';
import { HEADER_BYTES, HOST_CID, Op, type PacketHeader, RXQ, SocketType, TXQ, decodeHeader, encodeHeader } from '../../../src/devices/vsock/wire.ts';
import { createLoopback } from '../../../src/transports/mmio/loopback.ts';
import { DeviceId } from '../../../src/virtio/constants.ts';
import { VirtioDriver } from '../../../src/virtio/driver-core.ts';
import { EventReceiver } from '../../../src/virtio/event-receiver.ts';
import { FRAMEWORK_FEATURES } from '../../../src/virtio/features.ts';

/** A driver of raw packets: what the device puts in rx buffers, as headers and their payloads. */
export async function rawGuest(device: VsockDevice, cid: number, postRx = true, features = FRAMEWORK_FEATURES) {
  const loop = createLoopback(device, { memoryBytes: 4 << 20 });
  const core = await VirtioDriver.start(loop.transport, { name: 'raw', deviceId: DeviceId.VSOCK, features, queues: 3, queueSize: 16 });
  const rx: PacketHeader[] = [];
  const payloads: Uint8Array[] = [];
  const waiters: (() => void)[] = [];
  const post = (): EventReceiver =>
    new EventReceiver(core.queue(RXQ), loop.memory, loop.transport.dma, {
      bufferSize: HEADER_BYTES + 4096,
      log: core.log,
      onBuffer: (b) => {
        const h = decodeHeader(b)!;
        rx.push(h);
        payloads.push(b.slice(HEADER_BYTES, HEADER_BYTES + h.len));
        waiters.splice(0).forEach((w) => w());
      },
    });
  if (postRx) post();
  const send = async (h: Partial<PacketHeader>, payload = new Uint8Array(0), bytes?: Uint8Array): Promise<void> => {
    const full: PacketHeader = { srcCid: cid, dstCid: HOST_CID, srcPort: 100, dstPort: 200, len: payload.length, type: SocketType.STREAM, op: Op.RW, flags: 0, bufAlloc: 4096, fwdCnt: 0, ...h };
    const packet = bytes ?? new Uint8Array([...encodeHeader(full), ...payload]);
    const addr = loop.transport.dma.alloc(packet.length, 8)!;
    loop.memory.write(addr, packet);
    await core.queue(TXQ).submit([{ addr, len: packet.length }], []);
    loop.transport.dma.free(addr);
  };
  const until = async (n: number): Promise<void> => {
    while (rx.length < n) await new Promise<void>((r) => waiters.push(r));
  };
  return { core, rx, payloads, send, until, post };
}

