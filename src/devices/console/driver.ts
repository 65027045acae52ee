/**
 * The guest driver of the console device (§5.3), multiport: ports are learnt from the control
 * queue (DEVICE_ADD, PORT_NAME, CONSOLE_PORT, PORT_OPEN, DEVICE_REMOVE, RESIZE) and each is a
 * Node Duplex stream: what is written goes out on its transmitq, what the device sends arrives
 * as 'data'. Opening a port's stream tells the device (PORT_OPEN 1), ending it closes the port.
 *
 * Events of ConsoleDriver: 'port' (a port was added or learnt its name), 'remove' (DEVICE_REMOVE),
 * 'resize' ({cols, rows} of a console port). Events of a port: 'host' (the host end connected or
 * left, PORT_OPEN from the device).
 */
import { EventEmitter, once } from 'node:events';
import { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { DeviceId, Feature, featureBit, hasFeature } from '../../virtio/constants.ts';
import type { DriverTransport } from '../../virtio/driver.ts';
import { VirtioDriver } from '../../virtio/driver-core.ts';
import { EventReceiver } from '../../virtio/event-receiver.ts';
import { FRAMEWORK_FEATURES } from '../../virtio/features.ts';
import {
  CONSOLE_CONFIG,
  CONTROL_RX_QUEUE,
  CONTROL_TX_QUEUE,
  ConsoleFeature,
  ControlEvent,
  decodeControl,
  decodeName,
  decodeResize,
  encodeControl,
  portReceiveQueue,
  portTransmitQueue,
} from './wire.ts';

/**
 * Ports the driver sets up queues for at most, whatever max_nr_ports claims (it may claim
 * 0xffffffff): each port costs two rings. 32 covers QEMU's virtio-serial default of 31 ports
 * and this project's device (8 by default).
 */
export const MAX_DRIVER_PORTS = 32;

export interface ConsoleDriverOptions {
  /** Use a packed ring when the device offers one (default true). */
  readonly packed?: boolean;
  readonly queueSize?: number;
  /** Bytes per receive buffer and largest transmit buffer (default 4096). */
  readonly bufferSize?: number;
  readonly log?: Logger;
}

/** One port as the driver sees it: a byte stream to and from the host end. */
export class DriverPort extends Duplex {
  /** PORT_NAME, once the device sent it. */
  portName: string | undefined;
  /** CONSOLE_PORT: the device made it a console. */
  isConsole = false;
  /** PORT_OPEN from the device: a host client is connected. */
  hostConnected = false;
  /** The driver told the device it has the port open. */
  private opened = false;

  constructor(
    readonly id: number,
    private readonly driver: ConsoleDriver,
  ) {
    super({ allowHalfOpen: true });
  }

  /** Tell the device the guest has the port open (PORT_OPEN 1): host input flows from now. */
  async open(): Promise<void> {
    if (this.opened) return;
    this.opened = true;
    await this.driver.sendControl(this.id, ControlEvent.PORT_OPEN, 1);
  }

  /** Tell the device the guest closed the port (PORT_OPEN 0). */
  async closePort(): Promise<void> {
    if (!this.opened) return;
    this.opened = false;
    await this.driver.sendControl(this.id, ControlEvent.PORT_OPEN, 0);
  }

  /** Resolves once the host end is connected (or at once when it is). */
  async hostReady(): Promise<void> {
    while (!this.hostConnected) await once(this, 'host');
  }

  override _read(): void {
    // Receive buffers stay posted (EventReceiver); data is pushed as the device fills them.
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.driver.transmit(this.id, chunk).then(() => callback(), callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.closePort().then(() => callback(), callback);
  }
}

export class ConsoleDriver extends EventEmitter {
  readonly ports = new Map<number, DriverPort>();
  /** Receivers outlive a port's removal: their buffers stay posted for a port added again. */
  private readonly receivers = new Map<number, EventReceiver>();
  /** Aborted by close(): callers waiting for a port the device never names are failed, not left hanging. */
  private readonly closing = new AbortController();

  private constructor(
    readonly core: VirtioDriver,
    readonly maxPorts: number,
    private readonly bufferSize: number,
  ) {
    super();
  }

  static async open(transport: DriverTransport, options: ConsoleDriverOptions = {}): Promise<ConsoleDriver> {
    const bufferSize = options.bufferSize ?? 4096;
    if (!Number.isSafeInteger(bufferSize) || bufferSize < 64) throw new RangeError(`bufferSize ${bufferSize} is not an integer of at least 64`);
    let features = FRAMEWORK_FEATURES | featureBit(ConsoleFeature.MULTIPORT) | featureBit(ConsoleFeature.SIZE);
    if (options.packed === false) features &= ~featureBit(Feature.RING_PACKED);
    let maxPorts = 1;
    const core = await VirtioDriver.start(transport, {
      name: 'console',
      deviceId: DeviceId.CONSOLE,
      features,
      queues: async (plan) => {
        if (!hasFeature(plan.features, ConsoleFeature.MULTIPORT)) return 2;
        // §5.3.2: port 0's queues, the control queues, then two per further port, up to
        // max_nr_ports. Port 0 always exists, so 0 reads as 1; ports past what the transport has
        // queues for, or past MAX_DRIVER_PORTS, are not set up (their control messages are ignored).
        const raw = await plan.readConfig(CONSOLE_CONFIG.offset.maxNrPorts, 4);
        const claimed = new DataView(raw.buffer, raw.byteOffset, 4).getUint32(0, true);
        maxPorts = Math.max(1, Math.min(claimed, MAX_DRIVER_PORTS, ((await plan.deviceQueues()) - 2) >> 1));
        return 2 * (maxPorts + 1);
      },
      queueSize: options.queueSize,
      log: options.log,
    });
    try {
      const multiport = hasFeature(core.features, ConsoleFeature.MULTIPORT);
      const driver = new ConsoleDriver(core, maxPorts, bufferSize);
      if (!multiport) {
        driver.addPort(0);
        driver.ports.get(0)!.isConsole = true;
        return driver;
      }
      driver.receivers.set(-1, new EventReceiver(core.queue(CONTROL_RX_QUEUE), transport.memory, transport.dma, {
        bufferSize,
        buffers: Math.min(32, core.queue(CONTROL_RX_QUEUE).size),
        onBuffer: (bytes) => driver.control(bytes),
        log: core.log,
      }));
      await driver.sendControl(0, ControlEvent.DEVICE_READY, 1);
      return driver;
    } catch (err) {
      await core.close();
      throw err;
    }
  }

  /** The port called `name`, once the device has named it. */
  async port(name: string): Promise<DriverPort> {
    for (;;) {
      for (const p of this.ports.values()) if (p.portName === name) return p;
      await this.nextPort();
    }
  }

  /** The console port (CONSOLE_PORT, or port 0 without MULTIPORT), once known. */
  async consolePort(): Promise<DriverPort> {
    for (;;) {
      for (const p of this.ports.values()) if (p.isConsole) return p;
      await this.nextPort();
    }
  }

  /** The next 'port' event, or an error once the driver is closed. */
  private async nextPort(): Promise<void> {
    try {
      await once(this, 'port', { signal: this.closing.signal });
    } catch (err) {
      if (this.closing.signal.aborted) throw new Error('console: the driver was closed before the device named the port', { cause: err });
      throw err;
    }
  }

  async sendControl(id: number, event: number, value: number): Promise<void> {
    await this.send(CONTROL_TX_QUEUE, encodeControl(id, event, value));
  }

  /** Write `data` on port `id`'s transmitq, in buffers of at most bufferSize bytes. */
  async transmit(id: number, data: Uint8Array): Promise<void> {
    const parts: Promise<void>[] = [];
    for (let at = 0; at < data.length; at += this.bufferSize) parts.push(this.send(portTransmitQueue(id), data.subarray(at, at + this.bufferSize)));
    await Promise.all(parts);
  }

  async close(): Promise<void> {
    this.closing.abort();
    for (const port of this.ports.values()) port.destroy();
    await this.core.close();
  }

  private async send(queue: number, bytes: Uint8Array): Promise<void> {
    const { dma, memory } = this.core.transport;
    const addr = dma.alloc(bytes.length, 8);
    if (addr === undefined) throw new Error(`console: DMA memory exhausted allocating ${bytes.length} bytes`);
    try {
      memory.write(addr, bytes);
      await this.core.queue(queue).submit([{ addr, len: bytes.length }], []);
    } finally {
      dma.free(addr);
    }
  }

  /** One control message from the device; the device is not trusted with port ids or lengths. */
  private control(bytes: Uint8Array): void {
    const msg = decodeControl(bytes);
    if (msg === undefined) {
      this.core.log.warn(`console: ignored a control message of ${bytes.length} bytes`);
      return;
    }
    if (msg.id >= this.maxPorts) {
      this.core.log.warn(`console: ignored a control message for port ${msg.id}, past the ${this.maxPorts} ports`);
      return;
    }
    if (msg.event === ControlEvent.DEVICE_ADD) {
      this.addPort(msg.id);
      this.sendControl(msg.id, ControlEvent.PORT_READY, 1).catch((err: unknown) => this.core.log.warn({ err }, 'console: PORT_READY failed'));
      return;
    }
    const port = this.ports.get(msg.id);
    if (port === undefined) {
      this.core.log.warn(`console: ignored control event ${msg.event} for port ${msg.id}, which was not added`);
      return;
    }
    switch (msg.event) {
      case ControlEvent.DEVICE_REMOVE:
        this.ports.delete(msg.id);
        port.push(null);
        this.emit('remove', port);
        return;
      case ControlEvent.CONSOLE_PORT:
        port.isConsole = true;
        this.emit('port', port);
        return;
      case ControlEvent.PORT_NAME:
        port.portName = decodeName(msg.payload);
        this.emit('port', port);
        return;
      case ControlEvent.PORT_OPEN:
        port.hostConnected = msg.value === 1;
        port.emit('host', port.hostConnected);
        return;
      case ControlEvent.RESIZE: {
        const size = decodeResize(msg.payload);
        if (size !== undefined) this.emit('resize', { port, ...size });
        return;
      }
      default:
        this.core.log.warn(`console: ignored unknown control event ${msg.event}`);
    }
  }

  private addPort(id: number): void {
    if (this.ports.has(id)) return;
    const port = new DriverPort(id, this);
    this.ports.set(id, port);
    if (!this.receivers.has(id)) {
      const queue = this.core.queue(portReceiveQueue(id));
      this.receivers.set(id, new EventReceiver(queue, this.core.transport.memory, this.core.transport.dma, {
        bufferSize: this.bufferSize,
        onBuffer: (bytes) => this.ports.get(id)?.push(Buffer.from(bytes)),
        log: this.core.log,
      }));
    }
    this.emit('port', port);
  }
}
