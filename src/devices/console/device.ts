/**
 * The console device (§5.3), multiport: ports bridged to host ends (port.ts) and the control
 * queue protocol that tells the driver which ports exist, their names, which is the console, and
 * whether a host client is connected (§5.3.6.2).
 *
 * The conversation, as the device sees it: the driver sends DEVICE_READY; the device answers
 * DEVICE_ADD for every port; the driver sends PORT_READY per port; the device answers with
 * CONSOLE_PORT (console ports), PORT_NAME (named ports) and PORT_OPEN (a host client is
 * connected). Later the driver sends PORT_OPEN as the guest opens and closes ports, and the
 * device sends DEVICE_ADD / DEVICE_REMOVE for ports added and removed at run time, PORT_OPEN as
 * host clients come and go, RESIZE for the console.
 *
 * Control messages from the driver are not trusted: a short message, an unknown event, a port
 * that does not exist or was never announced, or a message out of order is counted
 * (controlErrors), logged once per kind, and ignored; the device keeps running, as QEMU's does.
 */
import { DeviceId, featureBit, hasFeature } from '../../virtio/constants.ts';
import { DeviceCounters } from '../../virtio/counters.ts';
import type { DeviceContext, VirtioDevice } from '../../virtio/device.ts';
import { EventQueue, ONE_PER_BUFFER } from '../../virtio/event-queue.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import { QueueServer, type Request } from '../../virtio/serve.ts';
import { ConsolePort, type PortSpec } from './port.ts';
import {
  CONSOLE_CONFIG,
  CONTROL_EVENT_NAMES,
  CONTROL_HEADER_SIZE,
  CONTROL_RX_QUEUE,
  CONTROL_TX_QUEUE,
  ConsoleFeature,
  ControlEvent,
  MAX_NAME_BYTES,
  MAX_PORTS_LIMIT,
  consoleQueueCount,
  decodeControl,
  encodeControl,
  encodeName,
  encodeResize,
  queuePort,
} from './wire.ts';

export interface ConsoleDeviceOptions {
  /** max_nr_ports: ports the device may ever have, port 0 included (default 8). */
  readonly maxPorts?: number;
  /** Largest queue size offered (default 256). */
  readonly maxQueueSize?: number;
  /** Console size (VIRTIO_CONSOLE_F_SIZE); without it the feature is not offered. */
  readonly size?: { readonly cols: number; readonly rows: number };
  /** Chunks of host input waiting per port for receive buffers (default 16). */
  readonly backlog?: number;
}

/** A port's place in the control conversation with the current driver. */
interface Announced {
  /** PORT_READY came back with success. */
  ready: boolean;
}

export class ConsoleDevice implements VirtioDevice {
  readonly deviceId = DeviceId.CONSOLE;
  readonly name = 'console';
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly config: Uint8Array;
  readonly counters: DeviceCounters;
  readonly maxPorts: number;
  private readonly ports = new Map<number, ConsolePort>();
  /** Ports the current driver was told about (DEVICE_ADD sent), by id. */
  private readonly announced = new Map<number, Announced>();
  private readonly backlog: number;
  private ctx: DeviceContext | undefined;
  private controlRx: EventQueue<Uint8Array> | undefined;
  private controlTx: QueueServer | undefined;
  private multiport = false;
  private driverReady = false;
  private controlErrors = 0;
  private controlDropped = 0;
  private emergencyBytes = 0;
  private readonly warned = new Set<string>();

  constructor(ports: readonly PortSpec[], options: ConsoleDeviceOptions = {}) {
    this.maxPorts = options.maxPorts ?? 8;
    if (!Number.isSafeInteger(this.maxPorts) || this.maxPorts < 1 || this.maxPorts > MAX_PORTS_LIMIT) {
      throw new RangeError(`console: max ports ${this.maxPorts} is not an integer from 1 to ${MAX_PORTS_LIMIT}`);
    }
    this.backlog = options.backlog ?? 16;
    this.maxQueueSize = options.maxQueueSize ?? 256;
    this.numQueues = consoleQueueCount(this.maxPorts, true);
    let features = FRAMEWORK_FEATURES | featureBit(ConsoleFeature.MULTIPORT) | featureBit(ConsoleFeature.EMERG_WRITE);
    if (options.size !== undefined) features |= featureBit(ConsoleFeature.SIZE);
    this.features = features;
    this.config = CONSOLE_CONFIG.encode({ cols: options.size?.cols ?? 0, rows: options.size?.rows ?? 0, maxNrPorts: this.maxPorts, emergWr: 0 });
    this.counters = new DeviceCounters(this.numQueues, () => ({
      controlErrors: this.controlErrors,
      controlDropped: this.controlDropped,
      emergencyBytes: this.emergencyBytes,
      discardedBytes: [...this.ports.values()].reduce((n, p) => n + p.discardedBytes, 0),
    }));
    for (const spec of ports) this.addPort(spec);
  }

  port(id: number): ConsolePort | undefined {
    return this.ports.get(id);
  }

  /** Add a port; while a driver runs it is told at once (DEVICE_ADD), which is hot-plug. */
  addPort(spec: PortSpec): ConsolePort {
    if (!Number.isInteger(spec.id) || spec.id < 0 || spec.id >= this.maxPorts) {
      throw new RangeError(`console: port ${spec.id} is outside 0 to ${this.maxPorts - 1} (max ports ${this.maxPorts})`);
    }
    if (this.ports.has(spec.id)) throw new RangeError(`console: port ${spec.id} exists already`);
    if (spec.name !== undefined && Buffer.byteLength(spec.name) > MAX_NAME_BYTES) {
      throw new RangeError(`console: port name "${spec.name}" is longer than ${MAX_NAME_BYTES} bytes`);
    }
    if (spec.name !== undefined && [...this.ports.values()].some((p) => p.name === spec.name)) {
      throw new RangeError(`console: port name "${spec.name}" is taken`);
    }
    const port = new ConsolePort(spec, this.backlog);
    port.on('host-change', (connected: boolean) => {
      if (this.announced.get(port.id)?.ready === true) this.send(encodeControl(port.id, ControlEvent.PORT_OPEN, connected ? 1 : 0));
    });
    this.ports.set(spec.id, port);
    if (this.ctx !== undefined && this.driverReady) this.announce(port);
    else if (this.ctx !== undefined && !this.multiport && port.id === 0) this.bindSinglePort(port);
    return port;
  }

  /** Remove a port: the driver is told (DEVICE_REMOVE) and its queues are not used again. */
  removePort(id: number): void {
    const port = this.ports.get(id);
    if (port === undefined) throw new RangeError(`console: there is no port ${id}`);
    port.unbind();
    port.detach();
    port.removeAllListeners();
    this.ports.delete(id);
    if (this.announced.delete(id)) this.send(encodeControl(id, ControlEvent.DEVICE_REMOVE, 0));
  }

  /** The console's size changed: configuration space (F_SIZE) and RESIZE to console ports (MULTIPORT). */
  resize(cols: number, rows: number): void {
    if (hasFeature(this.features, ConsoleFeature.SIZE)) {
      CONSOLE_CONFIG.set(this.config, 'cols', cols);
      CONSOLE_CONFIG.set(this.config, 'rows', rows);
      if (this.ctx !== undefined && hasFeature(this.ctx.features, ConsoleFeature.SIZE)) this.ctx.configChanged();
    }
    for (const port of this.ports.values()) {
      if (port.console && this.announced.get(port.id)?.ready === true) this.send(encodeResize(port.id, cols, rows));
    }
  }

  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.multiport = hasFeature(ctx.features, ConsoleFeature.MULTIPORT);
    if (!this.multiport) {
      // §5.3.6: without MULTIPORT there is one port, port 0, and it is the console.
      const port0 = this.ports.get(0);
      if (port0 !== undefined) this.bindSinglePort(port0);
      return;
    }
    this.controlRx = new EventQueue(ctx, CONTROL_RX_QUEUE, {
      layout: ONE_PER_BUFFER,
      // Every port's whole announcement fits; a driver that never posts control buffers loses the rest (counted).
      backlog: 16 + 4 * this.maxPorts,
      overflow: 'drop',
      onDrop: () => this.controlDropped++,
    });
    this.controlTx = new QueueServer(ctx, CONTROL_TX_QUEUE, (req) => this.control(req));
  }

  queueNotify(index: number): void {
    if (index === CONTROL_RX_QUEUE && this.multiport) this.controlRx?.kick();
    else if (index === CONTROL_TX_QUEUE && this.multiport) this.controlTx?.kick();
    else {
      const at = queuePort(index);
      if (at !== undefined) this.ports.get(at.port)?.notify(at.receive);
    }
  }

  reset(): void {
    for (const port of this.ports.values()) port.unbind();
    this.announced.clear();
    this.ctx = undefined;
    this.controlRx = undefined;
    this.controlTx = undefined;
    this.driverReady = false;
    this.multiport = false;
  }

  /** §5.3.4: with EMERG_WRITE the driver writes one character to emerg_wr for port 0 (the console). */
  configWritten(offset: number, length: number): void {
    if (this.ctx === undefined || !hasFeature(this.ctx.features, ConsoleFeature.EMERG_WRITE)) return;
    if (!CONSOLE_CONFIG.touches('emergWr', offset, length)) return;
    if (this.ports.get(0)?.emergencyWrite(this.config[CONSOLE_CONFIG.offset.emergWr]) === true) this.emergencyBytes++;
  }

  private bindSinglePort(port: ConsolePort): void {
    if (this.ctx === undefined) return;
    port.bind(this.ctx);
    port.setGuestOpen(true);
  }

  /** Tell the driver about a port (DEVICE_ADD) and serve its queues. */
  private announce(port: ConsolePort): void {
    if (this.ctx === undefined) return;
    this.announced.set(port.id, { ready: false });
    port.bind(this.ctx);
    this.send(encodeControl(port.id, ControlEvent.DEVICE_ADD, 0));
  }

  private send(message: Uint8Array): void {
    this.controlRx?.offer(message);
  }

  /** One control message from the driver (§5.3.6.2). */
  private control(req: Request): void {
    const bytes = req.reader.readExact(Math.min(req.reader.remaining, CONTROL_HEADER_SIZE));
    const msg = bytes === undefined ? undefined : decodeControl(bytes);
    if (msg === undefined) {
      this.refuse('short', `a control message of ${req.chain.readableLength} bytes is shorter than its ${CONTROL_HEADER_SIZE}-byte header`);
      return;
    }
    const what = CONTROL_EVENT_NAMES[msg.event] ?? `event ${msg.event}`;
    switch (msg.event) {
      case ControlEvent.DEVICE_READY:
        if (msg.value !== 1) {
          this.ctx?.log.warn('console: the driver failed to set up (DEVICE_READY 0)');
          return;
        }
        if (this.driverReady) {
          this.refuse('ready-twice', 'DEVICE_READY came twice');
          return;
        }
        this.driverReady = true;
        for (const port of [...this.ports.values()].sort((a, b) => a.id - b.id)) this.announce(port);
        return;
      case ControlEvent.PORT_READY:
      case ControlEvent.PORT_OPEN: {
        const port = this.ports.get(msg.id);
        const state = this.announced.get(msg.id);
        if (port === undefined || state === undefined) {
          this.refuse(`unknown-${what}`, `${what} for port ${msg.id}, which the device did not add`);
          return;
        }
        if (msg.event === ControlEvent.PORT_READY) this.portReady(port, state, msg.value === 1);
        else if (!state.ready) this.refuse('open-before-ready', `PORT_OPEN for port ${msg.id} before PORT_READY`);
        else port.setGuestOpen(msg.value === 1);
        return;
      }
      default:
        this.refuse(`event-${what}`, `${what} is not a message the driver sends`);
    }
  }

  private portReady(port: ConsolePort, state: Announced, ok: boolean): void {
    if (!ok) {
      this.ctx?.log.warn(`console: the driver failed to add port ${port.id} (PORT_READY 0)`);
      return;
    }
    if (state.ready) {
      this.refuse('port-ready-twice', `PORT_READY came twice for port ${port.id}`);
      return;
    }
    state.ready = true;
    if (port.console) {
      this.send(encodeControl(port.id, ControlEvent.CONSOLE_PORT, 1));
      if (hasFeature(this.features, ConsoleFeature.SIZE)) {
        this.send(encodeResize(port.id, CONSOLE_CONFIG.get(this.config, 'cols'), CONSOLE_CONFIG.get(this.config, 'rows')));
      }
      // §5.3.6.2: a console port is open from the guest's side as soon as it exists.
      port.setGuestOpen(true);
    }
    if (port.name !== undefined) this.send(encodeName(port.id, port.name));
    if (port.hostConnected) this.send(encodeControl(port.id, ControlEvent.PORT_OPEN, 1));
  }

  /** A control message the device ignores: counted, and logged once per kind. */
  private refuse(kind: string, message: string): void {
    this.controlErrors++;
    if (this.warned.has(kind)) return;
    this.warned.add(kind);
    this.ctx?.log.warn(`console: ignored control message: ${message}`);
  }
}
