/**
 * A stock Linux guest under the lab's QEMU, driven by the agent on its second serial port.
 *
 *   const guest = await startGuest(t, { devices: ['-device', 'virtio-rng-pci'] });
 *   const { stdout } = await guest.check('cat /sys/class/misc/hw_random/rng_current');
 *
 * Guest RAM is a shared memfd so vhost-user and vfio-user back-ends can map it. Every file a
 * test hands QEMU (sockets, images) belongs in `guest.dir`, which QEMU can see even when it
 * runs in the lab's chroot; pass it to QEMU as `guest.qemuPath(file)`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { AgentClient, type RunResult } from './agent.ts';
import { labPaths, qemuCommand, readManifest, type LabManifest, type QemuCommand } from './qemu.ts';
import { QmpClient, type QmpEvent } from './qmp.ts';

export type { RunResult } from './agent.ts';

export interface GuestOptions {
  /** Shown in logs and used for the guest's directory; several guests may share a name. */
  name?: string;
  memoryMiB?: number;
  cpus?: number;
  /** Extra QEMU arguments, e.g. ['-device', 'virtio-blk-pci,drive=d0', '-drive', '...']. */
  devices?: string[];
  /** Extra kernel command line words. */
  append?: string;
  /** How long QEMU may take to bring the agent up. */
  timeoutMs?: number;
  /** Guest RAM as a shared memfd (default), which vhost-user and vfio-user back-ends need. */
  sharedMemory?: boolean;
  /** Which QEMU to run; the lab's (>= 10.1) by default. */
  qemu?: QemuCommand;
}

export interface RunOptions { timeoutMs?: number }

export interface Guest {
  readonly name: string;
  /** Host directory for this guest's sockets and images; removed at shutdown. */
  readonly dir: string;
  /** Milliseconds from spawning QEMU to the agent being ready. */
  readonly bootMs: number;
  /** The kernel release the guest runs. */
  readonly release: string;
  /** QEMU's process id (chroot execs QEMU in place), for reading its /proc entries. */
  readonly pid: number;
  /** `hostPath` as QEMU sees it. */
  qemuPath(hostPath: string): string;
  /** Runs a shell script in the guest. */
  run(script: string, opts?: RunOptions): Promise<RunResult>;
  /** Runs a shell script and returns its stdout; throws with stderr and the console tail unless it exits 0. */
  check(script: string, opts?: RunOptions): Promise<string>;
  qmp(command: string, args?: Record<string, unknown>): Promise<unknown>;
  /** The first QMP event named `name` not yet consumed, waiting for it if needed. */
  nextEvent(name: string): Promise<QmpEvent>;
  /** Kernel console, init and QEMU's own messages so far. */
  log(): string;
  /** Where the log is kept after shutdown. */
  readonly logFile: string;
  /** Stops QEMU and removes the guest's directory; safe to call more than once. */
  shutdown(): Promise<void>;
}

/**
 * panic=-1 with -no-reboot turns a guest panic into QEMU exiting, which bootGuest reports.
 * cryptomgr.notests and init_on_alloc=0 skip work that costs seconds under TCG and that no
 * device test depends on (crypto self-tests; zeroing every page the kernel allocates).
 */
/**
 * no_timer_check: the kernel's IO-APIC timer check fails (a panic) when a TCG vCPU is starved by
 * other work on the machine; it tests the host's load, not a device.
 */
export const KERNEL_ARGS = ['console=ttyS0', 'panic=-1', 'quiet', 'cryptomgr.notests', 'init_on_alloc=0', 'no_timer_check'];
const DEFAULT_BOOT_TIMEOUT_MS = 60_000;
const DEFAULT_RUN_TIMEOUT_MS = 60_000;
/** Console logs kept in the lab's log directory; older ones are deleted. */
const KEPT_LOGS = 200;

/** Guests still running, killed if the test process exits without shutting them down. */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

/**
 * The machine every lab guest runs: q35 under TCG (KVM here does not run guest code natively),
 * the lab kernel booted through PVH, the initramfs with the agent. Serial ports, QMP and devices
 * are the caller's.
 */
export function machineArgs(
  qemu: QemuCommand,
  manifest: LabManifest,
  opts: Pick<GuestOptions, 'name' | 'memoryMiB' | 'cpus' | 'sharedMemory' | 'append'>,
): string[] {
  const memoryMiB = opts.memoryMiB ?? 512;
  const memory = opts.sharedMemory === false
    ? []
    : ['-object', `memory-backend-memfd,id=ram,size=${memoryMiB}M,share=on`, '-machine', 'memory-backend=ram'];
  return [
    '-name', opts.name ?? 'guest', '-machine', 'q35', '-accel', 'tcg', '-cpu', 'max',
    '-smp', String(opts.cpus ?? 1), '-m', `${memoryMiB}M`, ...memory,
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-kernel', qemu.toQemuPath(manifest.kernel.vmlinux), '-initrd', qemu.toQemuPath(manifest.initramfs),
    '-append', [...KERNEL_ARGS, opts.append ?? ''].join(' ').trim(),
  ];
}

/** Listens on a Unix socket and resolves with the first connection (QEMU's). */
export function acceptOne(path: string): { server: Server; connection: Promise<Socket> } {
  const server = createServer();
  const connection = new Promise<Socket>((resolve, reject) => {
    server.once('connection', resolve);
    server.once('error', reject);
  });
  // Awaited only once QEMU is running; a listen error before that must not go unhandled.
  connection.catch(() => undefined);
  server.listen(path);
  return { server, connection };
}

function tail(text: string, lines = 40): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

function pruneLogs(dir: string): void {
  const logs = readdirSync(dir).filter((f) => f.endsWith('.log'))
    // Other test processes prune the same directory: a log may vanish between listing and stat.
    .map((f) => ({ f, t: statSync(join(dir, f), { throwIfNoEntry: false })?.mtimeMs ?? 0 }))
    .sort((a, b) => b.t - a.t);
  for (const { f } of logs.slice(KEPT_LOGS)) rmSync(join(dir, f), { force: true });
}

/** Boots a guest and resolves once its agent answers; on failure the error carries the console tail. */
export async function bootGuest(opts: GuestOptions = {}): Promise<Guest> {
  const paths = labPaths();
  const manifest = readManifest(paths);
  const qemu = opts.qemu ?? qemuCommand();
  const name = opts.name ?? 'guest';
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new Error(`guest name "${name}" may only use letters, digits, '_', '.' and '-'`);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_BOOT_TIMEOUT_MS;

  mkdirSync(qemu.shareDir, { recursive: true });
  mkdirSync(paths.logDir, { recursive: true });
  const dir = mkdtempSync(join(qemu.shareDir, `${name}-`));
  const logFile = join(paths.logDir, `${dir.slice(dir.lastIndexOf('/') + 1)}.log`);
  let consoleText = '';
  const agentListener = acceptOne(join(dir, 'agent.sock'));
  const qmpListener = acceptOne(join(dir, 'qmp.sock'));
  const q = (p: string): string => qemu.toQemuPath(p);

  const args = [
    ...machineArgs(qemu, manifest, { ...opts, name, append: `paravirt.agent=ttyS1 ${opts.append ?? ''}` }),
    // ttyS0: console on QEMU's stdout; ttyS1: the agent. QEMU connects to both sockets before the guest runs.
    '-chardev', 'stdio,id=console,signal=off', '-serial', 'chardev:console',
    '-chardev', `socket,id=agent,path=${q(join(dir, 'agent.sock'))}`, '-serial', 'chardev:agent',
    '-qmp', `unix:${q(join(dir, 'qmp.sock'))}`,
    ...(opts.devices ?? []),
  ];

  let qemuProcess: ChildProcess | undefined;
  /** Resolves once QEMU has exited and its output is drained (or it never started). */
  let qemuGone: Promise<unknown> = Promise.resolve();
  /** Why QEMU ended, when it ended without being asked to. */
  let ownExit: string | undefined;
  let stopping = false;
  let stopped: Promise<void> | undefined;
  const sockets: Socket[] = [];
  const shutdown = (): Promise<void> => {
    stopped ??= (async () => {
      stopping = true;
      const p = qemuProcess;
      if (p && p.exitCode === null && p.signalCode === null) {
        p.kill('SIGTERM');
        const timer = setTimeout(() => p.kill('SIGKILL'), 5000);
        await qemuGone;
        clearTimeout(timer);
      }
      await qemuGone;
      if (p) live.delete(p);
      for (const s of sockets) s.destroy();
      agentListener.server.close();
      qmpListener.server.close();
      writeFileSync(logFile, consoleText);
      pruneLogs(paths.logDir);
      rmSync(dir, { recursive: true, force: true });
    })();
    return stopped;
  };

  try {
    const started = Date.now();
    const p = spawn(qemu.argv[0], [...qemu.argv.slice(1), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    qemuProcess = p;
    live.add(p);
    qemuGone = new Promise((resolve) => {
      p.once('close', resolve);
      p.once('error', resolve);
    });
    p.stdout?.setEncoding('utf8').on('data', (d: string) => (consoleText += d));
    let stderrLine = '';
    p.stderr?.setEncoding('utf8').on('data', (d: string) => {
      const lines = (stderrLine + d).split('\n');
      stderrLine = lines.pop() ?? '';
      for (const l of lines) consoleText += `qemu: ${l}\n`;
    });
    const exited = new Promise<never>((_, reject) => {
      p.once('exit', (code, signal) => {
        // Stopped by us, QEMU ends with code 0 or our signal; a failure code is its own doing even if we were stopping it.
        if (!stopping || (code !== null && code !== 0)) ownExit = `QEMU exited (${signal ?? `code ${code}`}) before the guest agent was ready`;
        reject(new Error(ownExit ?? 'QEMU was stopped'));
      });
      p.once('error', (err) => {
        ownExit = `cannot start ${qemu.argv[0]}: ${err.message}`;
        reject(new Error(ownExit));
      });
    });
    exited.catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the guest agent was not ready within ${timeoutMs} ms`)), timeoutMs);
    });
    let agent: AgentClient;
    let qmp: QmpClient;
    let release: string;
    try {
      const [agentSocket, qmpSocket] = await Promise.race([Promise.all([agentListener.connection, qmpListener.connection]), exited, timedOut]);
      sockets.push(agentSocket, qmpSocket);
      agent = new AgentClient(agentSocket);
      qmp = new QmpClient(qmpSocket);
      await Promise.race([qmp.negotiate(), exited, timedOut]);
      release = await Promise.race([agent.ready, exited, timedOut]);
    } finally {
      clearTimeout(timer);
    }
    const bootMs = Date.now() - started;

    const runScript = async (script: string, o: RunOptions = {}): Promise<RunResult> => {
      try {
        return await agent.run(script, o.timeoutMs ?? DEFAULT_RUN_TIMEOUT_MS);
      } catch (err) {
        throw new Error(`guest ${name}: \`${script}\`: ${(err as Error).message}\n--- console (${logFile}) ---\n${tail(consoleText)}`, { cause: err });
      }
    };
    return {
      name, dir, bootMs, release, logFile, shutdown,
      pid: p.pid!,
      qemuPath: q,
      run: runScript,
      async check(script, o) {
        const r = await runScript(script, o);
        if (r.code !== 0) {
          throw new Error(`guest ${name}: \`${script}\` exited with ${r.code}: ${r.stderr.trim()}\n--- console (${logFile}) ---\n${tail(consoleText)}`);
        }
        return r.stdout;
      },
      qmp: (command, a) => qmp.execute(command, a),
      nextEvent: (event) => qmp.nextEvent(event),
      log: () => consoleText,
    };
  } catch (err) {
    await shutdown();
    // QEMU closing its sockets as it dies can reach us before its exit does; its exit is the real reason.
    const reason = ownExit ?? (err as Error).message;
    throw new Error(`guest ${name} did not boot: ${reason}\n--- console (${logFile}) ---\n${tail(consoleText)}`, { cause: err });
  }
}

/** bootGuest() whose shutdown is registered with the test, so QEMU and its sockets go away even when the test fails. */
export async function startGuest(t: TestContext, opts: GuestOptions = {}): Promise<Guest> {
  const guest = await bootGuest(opts);
  t.after(() => guest.shutdown());
  return guest;
}

/**
 * A fresh directory QEMU can see, for files several guests share or that must exist before a
 * guest boots (disk images, back-end sockets); removed when the test ends.
 */
export function shareDir(t: TestContext, prefix = 'shared'): { dir: string; qemuPath(hostPath: string): string } {
  const qemu = qemuCommand();
  mkdirSync(qemu.shareDir, { recursive: true });
  const dir = mkdtempSync(join(qemu.shareDir, `${prefix}-`));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return { dir, qemuPath: (p) => qemu.toQemuPath(p) };
}
