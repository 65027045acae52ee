import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Feature, hasFeature } from '../../src/virtio/constants.ts';
import { startStorageDaemon } from '../lab/qsd.ts';
import { missingProgram } from '../lab/peers-env.ts';
import { requireLab } from '../lab/require.ts';
import { qemuCommand } from '../lab/qemu.ts';

// docs/interop/vhost-user.rst: a 12-byte header (request, flags, size) then the payload.
const GET_FEATURES = 1;
const GET_PROTOCOL_FEATURES = 15;
const GET_QUEUE_NUM = 17;
const VERSION_1_FLAGS = 0x1;
const REPLY_FLAG = 0x4;
const F_PROTOCOL_FEATURES = 30;
const PROTOCOL_F_MQ = 0;

/** Sends one payload-less request and resolves with the reply's u64 payload. */
function askU64(socket: Socket, request: number): Promise<bigint> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      if (got.length < 12 + 8) return;
      socket.off('data', onData);
      socket.off('error', reject);
      try {
        assert.equal(got.readUInt32LE(0), request, 'the reply names the request');
        assert.equal(got.readUInt32LE(4), VERSION_1_FLAGS | REPLY_FLAG, 'version 1, reply bit set');
        assert.equal(got.readUInt32LE(8), 8, 'a u64 payload');
        assert.equal(got.length, 20, 'nothing more than the reply');
        resolve(got.readBigUInt64LE(12));
      } catch (error) {
        reject(error);
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    const header = Buffer.alloc(12);
    header.writeUInt32LE(request, 0);
    header.writeUInt32LE(VERSION_1_FLAGS, 4);
    socket.write(header);
  });
}

function connected(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path, () => resolve(socket));
    socket.once('error', reject);
  });
}

/** A directory the daemon can see, removed when the test ends. */
function scratch(t: TestContext, which: 'lab' | 'system'): string {
  const share = which === 'lab' ? qemuCommand().shareDir : tmpdir();
  const dir = mkdtempSync(join(existsSync(share) ? share : tmpdir(), 'qsd-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

for (const qemu of ['lab', 'system'] as const) {
  test(`${qemu} qemu-storage-daemon exports vhost-user-blk and answers feature and queue queries`, async (t) => {
    if (!(qemu === 'lab' ? requireLab(t) : requireLab(t, missingProgram('qemu-storage-daemon', 'qemu-system-common')))) return;
    const dir = scratch(t, qemu);
    const image = join(dir, 'disk.img');
    writeFileSync(image, Buffer.alloc(1 << 20));
    const daemon = await startStorageDaemon({ image, socketPath: join(dir, 'vub.sock'), numQueues: 2, writable: true, qemu }, t);

    const socket = await connected(daemon.socketPath);
    t.after(() => socket.destroy());
    const features = await askU64(socket, GET_FEATURES);
    assert.ok(hasFeature(features, Feature.VERSION_1), 'VIRTIO_F_VERSION_1');
    assert.ok(hasFeature(features, F_PROTOCOL_FEATURES), 'VHOST_USER_F_PROTOCOL_FEATURES');
    assert.ok(hasFeature(features, Feature.INDIRECT_DESC) && hasFeature(features, Feature.EVENT_IDX));
    const protocol = await askU64(socket, GET_PROTOCOL_FEATURES);
    assert.ok(hasFeature(protocol, PROTOCOL_F_MQ), 'VHOST_USER_PROTOCOL_F_MQ');
    assert.equal(await askU64(socket, GET_QUEUE_NUM), 2n, 'the num-queues the export was given');
    t.diagnostic(
      `qemu-storage-daemon ${daemon.version}: features 0x${features.toString(16)} (RING_PACKED ${hasFeature(features, Feature.RING_PACKED) ? 'offered' : 'not offered'}), protocol features 0x${protocol.toString(16)}`,
    );

    await daemon.stop();
    assert.equal(existsSync(daemon.socketPath), false, 'the socket is gone after stop');
  });
}
