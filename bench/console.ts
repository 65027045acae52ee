/**
 * Guest-to-host throughput through one serial port, paravirt against QEMU in one guest: a port of
 * `paravirt serve console` (vhost-user-test-device-pci, virtio-id=3) and a virtserialport of
 * QEMU's own virtio-serial-pci, each on a Unix socket the host reads as fast as it can. The guest
 * writes the same bytes to each (dd from /dev/zero, 64 KiB writes); the rate is bytes over the
 * time from starting dd to the host holding the last byte. TCG guest: absolute numbers are low,
 * the ratio is the point.
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bootGuest, type Guest } from '../test/lab/guest.ts';
import { PeerProcess } from '../test/lab/peer-process.ts';
import { qemuCommand } from '../test/lab/qemu.ts';
import { report, step } from './_report.ts';

export const deadlineSeconds = 300;

const PARAVIRT = fileURLToPath(new URL('../bin/paravirt.js', import.meta.url));
const BYTES = 32 << 20;
const MAX_PORTS = 2;

/** Count what arrives on `s` until `n` bytes did; resolves with the time of the last byte. */
function drain(s: Socket, n: number): Promise<number> {
  let got = 0;
  return new Promise((resolve) => {
    s.on('data', (chunk: Buffer) => {
      got += chunk.length;
      if (got >= n) resolve(performance.now());
    });
  });
}

async function devOf(guest: Guest, name: string): Promise<string> {
  const file = (await guest.check(`grep -lx '${name}' /sys/class/virtio-ports/*/name`)).trim();
  return `/dev/${file.split('/')[4]}`;
}

async function measure(guest: Guest, name: string, host: Socket): Promise<number> {
  step(`the guest writing ${BYTES} bytes to ${name}`);
  const dev = await devOf(guest, name);
  const last = drain(host, BYTES);
  const start = performance.now();
  const run = guest.run(`dd if=/dev/zero of=${dev} bs=65536 count=${BYTES / 65536} 2>&1`, { timeoutMs: 200_000 });
  const end = await last;
  const r = await run;
  if (r.code !== 0) throw new Error(`dd to ${name} failed: ${r.stdout}${r.stderr}`);
  host.removeAllListeners('data');
  return BYTES / ((end - start) / 1000);
}

export async function main(): Promise<void> {
  const qemu = qemuCommand();
  const dir = mkdtempSync(join(qemu.shareDir, 'bench-console-'));
  const backend = new PeerProcess('paravirt serve console', [
    process.execPath, PARAVIRT, 'serve', 'console', '--socket-path', join(dir, 'vu.sock'), '--max-ports', String(MAX_PORTS),
    '--port', `org.paravirt.bench=unix:${join(dir, 'paravirt.sock')}`,
  ], { textStdout: true });
  // QEMU's chardev connects to this listener when it starts.
  const qemuListener = createServer();
  qemuListener.listen(join(dir, 'qemu.sock'));
  const qemuSide = once(qemuListener, 'connection');
  let guest: Guest | undefined;
  try {
    step('starting paravirt serve console');
    await backend.waitForOutput(/vhost-user back-end listening/, 0, 'starting to listen');
    step('booting the guest');
    guest = await bootGuest({
      name: 'bench-console',
      devices: [
        '-chardev', `socket,id=vucon,path=${qemu.toQemuPath(join(dir, 'vu.sock'))}`,
        '-device', `vhost-user-test-device-pci,chardev=vucon,virtio-id=3,num_vqs=${2 * MAX_PORTS + 2},config_size=12`,
        '-device', 'virtio-serial-pci,id=vser0,max_ports=2',
        '-chardev', `socket,id=qport,path=${qemu.toQemuPath(join(dir, 'qemu.sock'))}`,
        '-device', 'virtserialport,bus=vser0.0,chardev=qport,name=org.qemu.bench',
      ],
    });
    const paravirtHost = connect(join(dir, 'paravirt.sock'));
    await once(paravirtHost, 'connect');
    const [qemuHost] = (await qemuSide) as [Socket];
    const results: Record<string, number> = {};
    // Alternate, twice each, so a burst of load on the machine hits both.
    for (let round = 0; round < 2; round++) {
      for (const [peer, name, host] of [['paravirt', 'org.paravirt.bench', paravirtHost], ['qemu', 'org.qemu.bench', qemuHost]] as const) {
        const rate = await measure(guest, name, host);
        results[peer] = Math.max(results[peer] ?? 0, rate);
      }
    }
    for (const [peer, rate] of Object.entries(results)) {
      report('console', 'guest_to_host_throughput', Math.round((rate / 2 ** 20) * 10) / 10, 'MiB/s', { peer, bytes: BYTES, best_of: 2 });
    }
    report('console', 'paravirt_over_qemu', Math.round((results.paravirt / results.qemu) * 100) / 100, 'ratio');
    paravirtHost.destroy();
    qemuHost.destroy();
  } finally {
    await guest?.shutdown();
    await backend.stop();
    qemuListener.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
