/**
 * One back-end process serving many devices at once: each planned device is built by its type's
 * host half (the registry's `host.create`) and served on its own socket, vhost-user or
 * vfio-user. `paravirt run` starts one for its VM; a dashboard reads the same devices (their
 * counters, their controls) and shares the guest's console.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { DeviceType, HostDevices } from '../devices/device-type.ts';
import type { OptionValues } from '../devices/host-options.ts';
import type { ServingOptions } from '../virtio/device.ts';
import { deviceServer, type DeviceServer, type ListenDevice, type SocketTransport } from '../transports/device-server.ts';
import { SharedConsole } from './shared-console.ts';

/** One device of the plan: a registered type and its host options, as `paravirt serve` parses them. */
export interface DevicePlan {
  /** Names the device in logs and its socket: "blk0". */
  readonly id: string;
  readonly type: DeviceType;
  readonly values: OptionValues;
  /** vhost-user unless the VMM has no vhost-user device for the type. */
  readonly transport?: SocketTransport;
  /** vhost-user: offer the CONFIG protocol feature (VhostUserServing.offerConfig); by default it is offered. */
  readonly offerConfig?: boolean;
}

export interface BackendPlan {
  /** Directory the sockets are made in, `<id>.sock` each. */
  readonly socketDir: string;
  readonly devices: readonly DevicePlan[];
  /**
   * The id of a console device whose console port (the guest's hvc0) is shared through
   * `Backend.console`; its `console` option is filled in by the back-end.
   */
  readonly console?: string;
  /** How every device's queues are served (the poll budget). */
  readonly serving?: ServingOptions;
}

export interface HostedDevice {
  readonly id: string;
  readonly type: DeviceType;
  readonly transport: SocketTransport;
  readonly socketPath: string;
  /** The host options it was built with (its control sockets' paths among them). */
  readonly values: OptionValues;
  /** What the type's host half built: `instance.devices[0]` is the device on `socketPath`. */
  readonly instance: HostDevices;
}

/** A hosted device's server while it listens, and how to listen again. */
interface Serving {
  server: DeviceServer | undefined;
  readonly listen: () => DeviceServer;
  /**
   * The last start or stop, which the next one waits for: a stop removes the socket file when its
   * server is closed, which must not happen after a start has listened on the same path.
   */
  settled: Promise<void>;
}

export class Backend {
  private closing: Promise<void> | undefined;
  private reportFailure: (err: Error) => void = () => {};
  /**
   * Settles when a server stopped by itself (its listening socket failed), with its error;
   * never when close() or setListening() stopped it.
   */
  readonly failed = new Promise<Error>((resolve) => (this.reportFailure = resolve));

  private constructor(
    /** The directory the sockets are in (the plan's socketDir). */
    readonly dir: string,
    readonly devices: readonly HostedDevice[],
    /** The shared guest console, when the plan names one. */
    readonly console: SharedConsole | undefined,
    private readonly serving: ReadonlyMap<string, Serving>,
  ) {
    for (const s of serving.values()) this.watch(s.server);
  }

  /** Build every planned device and listen on its socket; on any failure what was built is released. */
  static async start(plan: BackendPlan, log: Logger): Promise<Backend> {
    const ids = new Set<string>();
    for (const { id } of plan.devices) {
      if (ids.has(id)) throw new Error(`device id ${id} is planned twice.`);
      ids.add(id);
    }
    if (plan.console !== undefined && !ids.has(plan.console)) throw new Error(`the console device ${plan.console} is not in the plan.`);
    const console = plan.console === undefined ? undefined : new SharedConsole();
    const hosted: HostedDevice[] = [];
    const serving = new Map<string, Serving>();
    const release = async (): Promise<void> => {
      await Promise.all([...serving.values()].map((s) => s.server?.close()));
      for (const h of hosted.reverse()) await h.instance.close();
    };
    try {
      for (const entry of plan.devices) {
        const transport = entry.transport ?? 'vhost-user';
        const socketPath = join(plan.socketDir, `${entry.id}.sock`);
        const deviceLog = log.child({ device: entry.id });
        const values = entry.id === plan.console && console !== undefined ? { ...entry.values, console: { kind: 'link', link: console.link } } : entry.values;
        const instance = await entry.type.host.create(values, { sockets: 1, log: deviceLog });
        hosted.push({ id: entry.id, type: entry.type, transport, socketPath, values, instance });
        if (instance.devices.length !== 1) throw new Error(`device ${entry.id} (${entry.type.name}) built ${instance.devices.length} devices for one socket.`);
        const listen: ListenDevice = await deviceServer(transport, { ...plan.serving, offerConfig: entry.offerConfig });
        const serve = (): DeviceServer => {
          const server = listen(instance.devices[0], { socketPath }, deviceLog);
          deviceLog.info({ socketPath, transport }, `${entry.type.name} listening`);
          return server;
        };
        serving.set(entry.id, { server: serve(), listen: serve, settled: Promise.resolve() });
      }
    } catch (err) {
      await release();
      throw err;
    }
    return new Backend(plan.socketDir, hosted, console, serving);
  }

  /** The hosted device called `id`. */
  device(id: string): HostedDevice | undefined {
    return this.devices.find((d) => d.id === id);
  }

  /**
   * Stop serving device `id` (its front-end is disconnected and its socket removed), or serve it
   * again. The device keeps its state and counters. QEMU's virtio-net follows its back-end's
   * socket for the link it shows the guest (it reads no link state from a back-end): with
   * `-chardev socket,...,reconnect-ms=N`, as `paravirt run` gives it (QemuAttachment.reconnect), this takes the guest's
   * link down and up (with `NetDevice.setLink` for front-ends that do read it).
   */
  async setListening(id: string, listening: boolean): Promise<void> {
    const s = this.serving.get(id);
    if (s === undefined) throw new Error(`no hosted device is called ${id}.`);
    const change = s.settled.then(async () => {
      if (this.closing !== undefined) return;
      if (listening) {
        if (s.server === undefined) {
          s.server = s.listen();
          this.watch(s.server);
        }
        return;
      }
      const server = s.server;
      s.server = undefined;
      await server?.close();
    });
    s.settled = change.catch(() => {});
    return change;
  }

  /** Stop every server (sessions end, sockets are removed), then release every device. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.all([...this.serving.values()].map((s) => s.server?.close()));
      for (const h of [...this.devices].reverse()) await h.instance.close();
    })();
    return this.closing;
  }

  private watch(server: DeviceServer | undefined): void {
    void server?.closed.then((failure) => failure !== undefined && this.reportFailure(failure));
  }
}
