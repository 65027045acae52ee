/**
 * qemu-storage-daemon exporting a disk image as a vhost-user-blk back-end on a Unix socket: the
 * reference back-end our vhost-user front-end and guests are measured against.
 */
import { rmSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import type { TestContext } from 'node:test';
import { PEER_DEADLINE_MS, PeerProcess } from './peer-process.ts';
import { qemuCommand, systemQemuCommand } from './qemu.ts';

export interface StorageDaemonOptions {
  /** Host path of a raw disk image. */
  readonly image: string;
  /** Host path where the vhost-user socket is created; for the lab's chrooted daemon, under its share dir. */
  readonly socketPath: string;
  readonly numQueues: number;
  readonly writable: boolean;
  /** 'lab': the daemon from the lab's QEMU build (default); 'system': the host distribution's. */
  readonly qemu?: 'lab' | 'system';
}

export interface StorageDaemon {
  readonly socketPath: string;
  /** QEMU version of the daemon, e.g. "7.2.22". */
  readonly version: string;
  readonly process: PeerProcess;
  /** Ends the daemon; safe to call twice. */
  stop(): Promise<void>;
}

/** QEMU's option parser ends a value at a comma; a literal comma is written twice. */
const optionValue = (s: string): string => s.replaceAll(',', ',,');

/** Between two connection attempts while the daemon starts (it listens within milliseconds). */
const CONNECT_RETRY_MS = 10;

/** Resolves once `path` accepts a connection (closed at once); fails if `peer` exits first. */
export async function waitForListening(path: string, peer: PeerProcess): Promise<void> {
  const deadline = Date.now() + PEER_DEADLINE_MS;
  for (;;) {
    const error = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
      const socket = connect(path);
      socket.once('connect', () => {
        socket.destroy();
        resolve(undefined);
      });
      socket.once('error', (e: NodeJS.ErrnoException) => resolve(e));
    });
    if (error === undefined) return;
    if (error.code !== 'ENOENT' && error.code !== 'ECONNREFUSED') throw error;
    if (!peer.running) throw new Error(peer.describe(`starting to listen on ${path}`));
    if (Date.now() > deadline) throw new Error(peer.describe(`starting to listen on ${path} (gave up after ${PEER_DEADLINE_MS} ms)`));
    await delay(CONNECT_RETRY_MS);
  }
}

/** Starts the daemon and resolves once its socket accepts connections; with `t`, it stops when the test ends. */
export async function startStorageDaemon(options: StorageDaemonOptions, t?: TestContext): Promise<StorageDaemon> {
  const { image, socketPath, numQueues, writable } = options;
  if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > 1024) {
    throw new RangeError(`numQueues ${numQueues} is not an integer in 1..1024`);
  }
  const qemu = (options.qemu ?? 'lab') === 'lab' ? qemuCommand() : systemQemuCommand();
  const onOff = (b: boolean): string => (b ? 'on' : 'off');
  const argv = [
    ...qemu.tool('qemu-storage-daemon'),
    '--blockdev',
    `driver=file,node-name=disk0,filename=${optionValue(qemu.toQemuPath(image))},read-only=${onOff(!writable)}`,
    '--export',
    [
      'type=vhost-user-blk,id=export0,node-name=disk0,addr.type=unix',
      `addr.path=${optionValue(qemu.toQemuPath(socketPath))}`,
      `writable=${onOff(writable)}`,
      `num-queues=${numQueues}`,
    ].join(','),
  ];
  const peer = new PeerProcess(`qemu-storage-daemon ${qemu.version}`, argv, {
    textStdout: true,
    cleanup: () => rmSync(socketPath, { force: true }),
  });
  const stop = async (): Promise<void> => {
    await peer.stop();
  };
  try {
    await waitForListening(socketPath, peer);
  } catch (error) {
    await stop();
    throw error;
  }
  t?.after(stop);
  return { socketPath, version: qemu.version, process: peer, stop };
}
