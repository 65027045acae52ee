/**
 * Which threading model serves virtio-blk fastest: the blk driver over the vhost-user front-end
 * reads 4 KiB at random at queue depth 32 from a raw file on tmpfs, served by
 * qemu-storage-daemon and by paravirt's back-end with each I/O engine of FileBackend, each in its
 * own process, in alternating rounds; each reports its median IOPS and its ratio to
 * qemu-storage-daemon's. fio with io_uring on the same file is the host's ceiling.
 *
 * The engines: 'thread-pool' is node:fs/promises (one libuv work item per request) with libuv's
 * default 4 threads and with UV_THREADPOOL_SIZE=1; 'threads' is FileBackend's own I/O threads
 * (io-thread.ts) with 1 and 2 threads.
 */
import { execFileSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { report, step } from './_report.ts';
import { readOnlyStorageDaemon, tmpfsDisk } from './_tmpfs-disk.ts';
import { randomIo } from '../src/cli/blk-workload.ts';
import { BlkDriver } from '../src/devices/blk/driver.ts';
import { VhostUserFrontend } from '../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../src/virtio/constants.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';

const SERVE = fileURLToPath(new URL('./_blk-serve.ts', import.meta.url));
const DISK_BYTES = 256 * 1024 * 1024;
const BLOCK = 4096;
const DEPTH = 32;
const WARMUP_SECONDS = 1;
const ROUND_SECONDS = 2;
const ROUNDS = Number(process.env.ROUNDS ?? 5);
const log = pino({ level: 'warn' });

/** The paravirt variants: name, FileBackend io and threads, extra environment. */
const MODELS: { name: string; args: string[]; env?: string }[] = [
  { name: 'pool4', args: ['thread-pool'] },
  { name: 'pool1', args: ['thread-pool'], env: 'UV_THREADPOOL_SIZE=1' },
  { name: 'threads1', args: ['threads', '1'] },
  { name: 'threads2', args: ['threads', '2'] },
];

/** Start-up and fio, then every side's rounds (ROUNDS may be raised) with room for a busy machine. */
export const deadlineSeconds = 120 + 3 * (MODELS.length + 1) * ROUNDS * ROUND_SECONDS;

interface Side {
  readonly name: string;
  readonly blk: BlkDriver;
  readonly iops: number[];
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function fio(image: string): number {
  const out = execFileSync(
    'fio',
    ['--name=ceiling', `--filename=${image}`, '--ioengine=io_uring', '--direct=0', '--rw=randread', `--bs=${BLOCK}`, `--iodepth=${DEPTH}`,
      `--runtime=${ROUND_SECONDS * ROUNDS}`, `--ramp_time=${WARMUP_SECONDS}`, '--time_based', '--output-format=json'],
    { encoding: 'utf8' },
  );
  return (JSON.parse(out) as { jobs: { read: { iops: number } }[] }).jobs[0].read.iops;
}

export async function main(): Promise<void> {
  const disk = tmpfsDisk('paravirt-bench-', DISK_BYTES);
  const { dir, image } = disk;
  const stops: (() => Promise<unknown>)[] = [];
  const sides: Side[] = [];
  const open = async (name: string, socketPath: string): Promise<void> => {
    step(`connecting to ${name} and warming up`);
    const blk = await BlkDriver.open(await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.BLOCK, log }), { log });
    await randomIo(blk, { depth: DEPTH, blockSize: BLOCK, seconds: WARMUP_SECONDS });
    sides.push({ name, blk, iops: [] });
  };
  try {
    const daemon = await readOnlyStorageDaemon(disk);
    stops.push(daemon.stop);
    await open('qsd', daemon.socketPath);
    for (const model of MODELS) {
      const socketPath = join(dir, `${model.name}.sock`);
      const node = [process.execPath, '--import', 'tsx', SERVE, socketPath, image, ...model.args];
      const argv = model.env === undefined ? node : ['env', model.env, ...node];
      step(`starting paravirt ${model.name}`);
      const serve = new PeerProcess(`paravirt ${model.name}`, argv, { textStdout: true });
      stops.push(() => serve.stop());
      await serve.waitForOutput(/listening/, 0, 'starting to listen');
      await open(model.name, socketPath);
    }
    for (let i = 0; i < ROUNDS; i++) {
      for (const side of sides) {
        step(`reading from ${side.name}, round ${i + 1} of ${ROUNDS}`);
        side.iops.push((await randomIo(side.blk, { depth: DEPTH, blockSize: BLOCK, seconds: ROUND_SECONDS })).iops);
      }
    }
    const qsd = median(sides[0].iops);
    const context = { block: BLOCK, depth: DEPTH, rounds: ROUNDS, round_seconds: ROUND_SECONDS, file: 'tmpfs', loadavg: loadavg()[0] };
    for (const side of sides) {
      report('blk-threading', `read_4k_qd${DEPTH}_${side.name}_iops`, Math.round(median(side.iops)), 'IOPS', {
        ...context,
        over_qsd: Number((median(side.iops) / qsd).toFixed(3)),
        rounds_iops: side.iops.map(Math.round),
      });
    }
    step('running fio on the image');
    const ceiling = fio(image);
    report('blk-threading', `read_4k_qd${DEPTH}_fio_io_uring_iops`, Math.round(ceiling), 'IOPS', { ...context, loadavg: loadavg()[0] });
    for (const side of sides.slice(1)) {
      report('blk-threading', `${side.name}_over_fio`, Number((median(side.iops) / ceiling).toFixed(3)), 'ratio');
    }
  } finally {
    step('closing the drivers and stopping the back-ends');
    for (const side of sides) await side.blk.close();
    for (const stop of stops) await stop();
    disk.remove();
  }
}
