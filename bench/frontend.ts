/**
 * The blk driver over the vhost-user front-end: 4 KiB random reads at queue depth 32 against
 * qemu-storage-daemon's vhost-user-blk export and against `paravirt serve blk`, both serving the
 * same raw file on tmpfs (/dev/shm) from their own process. The ratio says how paravirt's
 * back-end compares with QEMU's on the same front-end; fio with io_uring on the same file (page
 * cache, no virtio at all) is the ceiling of what the host can do.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { report } from './_report.ts';
import { randomIo, type WorkloadResult } from '../src/cli/blk-workload.ts';
import { BlkDriver } from '../src/devices/blk/driver.ts';
import { VhostUserFrontend } from '../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../src/virtio/constants.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';
import { startStorageDaemon } from '../test/lab/qsd.ts';

const PARAVIRT = fileURLToPath(new URL('../bin/paravirt.js', import.meta.url));
const DISK_BYTES = 256 * 1024 * 1024;
const BLOCK = 4096;
const DEPTH = 32;
const WARMUP_SECONDS = 1;
const MEASURE_SECONDS = 5;
const log = pino({ level: 'warn' });

/** IOPS of the blk driver over a front-end connected to `socketPath`, and this process's CPU per op. */
async function measure(socketPath: string): Promise<WorkloadResult & { cpuMicrosPerOp: number }> {
  const frontend = await VhostUserFrontend.connect(socketPath, { deviceId: DeviceId.BLOCK, log });
  const blk = await BlkDriver.open(frontend, { log });
  try {
    await randomIo(blk, { depth: DEPTH, blockSize: BLOCK, seconds: WARMUP_SECONDS });
    const cpu = process.cpuUsage();
    const result = await randomIo(blk, { depth: DEPTH, blockSize: BLOCK, seconds: MEASURE_SECONDS });
    const used = process.cpuUsage(cpu);
    return { ...result, cpuMicrosPerOp: (used.user + used.system) / result.ops };
  } finally {
    await blk.close();
  }
}

interface FioJson {
  jobs: { read: { iops: number } }[];
  'fio version': string;
}

function fio(image: string): { iops: number; version: string } {
  const out = execFileSync(
    'fio',
    [
      '--name=ceiling',
      `--filename=${image}`,
      '--ioengine=io_uring',
      '--direct=0',
      '--rw=randread',
      `--bs=${BLOCK}`,
      `--iodepth=${DEPTH}`,
      `--runtime=${MEASURE_SECONDS}`,
      `--ramp_time=${WARMUP_SECONDS}`,
      '--time_based',
      '--output-format=json',
    ],
    { encoding: 'utf8' },
  );
  const json = JSON.parse(out) as FioJson;
  return { iops: json.jobs[0].read.iops, version: json['fio version'] };
}

export async function main(): Promise<void> {
  const dir = mkdtempSync('/dev/shm/paravirt-bench-');
  try {
    const image = join(dir, 'disk.img');
    // Written, not sparse: every read finds real pages.
    writeFileSync(image, new Uint8Array(DISK_BYTES).fill(0xa5));

    const daemon = await startStorageDaemon({ image, socketPath: join(dir, 'qsd.sock'), numQueues: 1, writable: false, qemu: 'system' });
    let qsd;
    try {
      qsd = await measure(daemon.socketPath);
    } finally {
      await daemon.stop();
    }

    const socketPath = join(dir, 'paravirt.sock');
    const serve = new PeerProcess('paravirt serve blk', [process.execPath, PARAVIRT, 'serve', 'blk', '--socket-path', socketPath, '--image', image, '--read-only'], {
      textStdout: true,
    });
    let paravirt;
    try {
      await serve.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
      paravirt = await measure(socketPath);
    } finally {
      await serve.stop();
    }

    const ceiling = fio(image);
    const context = { block: BLOCK, depth: DEPTH, seconds: MEASURE_SECONDS, file: 'tmpfs' };
    report('frontend', 'read_4k_qd32_qsd_iops', Math.round(qsd.iops), 'IOPS', { ...context, qsd: daemon.version, driver_cpu_us_per_op: Number(qsd.cpuMicrosPerOp.toFixed(1)) });
    report('frontend', 'read_4k_qd32_paravirt_iops', Math.round(paravirt.iops), 'IOPS', { ...context, driver_cpu_us_per_op: Number(paravirt.cpuMicrosPerOp.toFixed(1)) });
    report('frontend', 'paravirt_over_qsd', Number((paravirt.iops / qsd.iops).toFixed(3)), 'ratio');
    report('frontend', 'read_4k_qd32_fio_io_uring_iops', Math.round(ceiling.iops), 'IOPS', { ...context, fio: ceiling.version, direct: 0 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
