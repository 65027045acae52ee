/**
 * What a device type tells the rest of paravirt about itself: one descriptor per folder under
 * src/devices/, listed in registry.ts. The command line (`paravirt serve <type>`, `paravirt
 * devices`), the vhost-user front-end's device models and the adversarial fuzzer all read it, so
 * a new device type is served, listed and fuzzed by being registered.
 *
 * A descriptor is cheap to load: the host and guest halves are reached through asynchronous
 * factories that import the device's modules only when used, so `paravirt --print-capabilities`
 * or `paravirt devices` does not load every device.
 */
import type { Logger } from 'pino';
import type { ConfigLayout, FieldSpecs } from '../virtio/config-layout.ts';
import type { VirtioDevice } from '../virtio/device.ts';
import type { DriverTransport } from '../virtio/driver.ts';
import type { FeatureRequirement } from '../virtio/features.ts';
import type { VirtioDriver } from '../virtio/driver-core.ts';
import type { OptionSpec, OptionValues } from './host-options.ts';
import type { PciEndpoint } from '../transports/vfio-user/session.ts';

/** A kind of queue a device has (§5.x "Virtqueues"): receiveq, transmitq, controlq, requestq... */
export interface QueueRole {
  readonly name: string;
  /** How many of it, in words: "1", "one per --queues", "N pairs with transmitq". */
  readonly count: string;
  /** Largest ring a driver or front-end may give it. */
  readonly maxSize: number;
}

/**
 * The `type` (and `features`) of vhost-user.json's VHostUserBackendCapabilities, which
 * `--print-capabilities` prints (vhost-user.rst "Backend program conventions").
 */
export interface VhostUserCapabilities {
  readonly type: string;
  readonly features?: readonly string[];
}

/** Devices a host half built for one `serve` command, and how to release what they hold. */
export interface HostDevices {
  /** One device per listening socket, in the order the sockets were given. */
  readonly devices: readonly VirtioDevice[];
  /**
   * The type's control requests served in the same process (a dashboard): one JSON request in,
   * one reply out, as on its control socket. Absent when the type has none.
   */
  readonly control?: (request: string) => Promise<ControlReply>;
  close(): Promise<void>;
}

/** A control request's answer: `ok`, what was asked for, or `error`, one sentence. */
export interface ControlReply {
  readonly ok: boolean;
  readonly error?: string;
  readonly [key: string]: unknown;
}

/** Where a host half is being built: how many sockets it serves and where it logs. */
export interface HostEnvironment {
  readonly sockets: number;
  readonly log: Logger;
}

export interface HostHalf {
  /** One line for `paravirt serve --help`. */
  readonly summary: string;
  /** More help after the options: an example command line, what the front-end must match. */
  readonly help?: string;
  readonly options: readonly OptionSpec[];
  /** Several --socket-path (or --fd) may be given, one device on each (net's switch ports). */
  readonly manySockets?: boolean;
  /**
   * Build the devices from parsed options. A bad combination of options or an unusable file is
   * an Error of one sentence naming it.
   */
  create(values: OptionValues, env: HostEnvironment): Promise<HostDevices>;
}

/** Where `paravirt run` attaches a device to its VM. */
export interface VmContext {
  /** A directory for the device's files (sockets, scratch images), removed when the VM stops. */
  readonly dir: string;
  /** --disk: the user's disk image, for the device the guest boots from. */
  readonly disk?: string;
  /** --tap: a host TAP interface for the VM's network. */
  readonly tap?: string;
  /** False when only the QEMU command line is printed: name files, do not make them. */
  readonly makeFiles: boolean;
}

/**
 * How `paravirt run` attaches one device of the type to a QEMU VM: the host options of the
 * device it serves, and the QEMU device that is its front-end.
 */
export interface QemuAttachment {
  /** Host options of the VM's device, as `paravirt serve <type>` would parse them (defaults are added). */
  options(vm: VmContext): Promise<OptionValues>;
  /**
   * Host options of further devices of the type in the VM, attached the same way (input's tablet
   * next to its keyboard, so that the dashboard's screen has a pointer to drive).
   */
  more?(vm: VmContext): Promise<OptionValues[]>;
  /**
   * The device carries the VM's console, the guest's terminal by this name ("hvc0"): `run`
   * shares it with viewers through its `console` option (an endpoint of kind `link`).
   */
  readonly console?: string;
  /**
   * QEMU connects again when the back-end's socket goes away (`reconnect-ms`): for a front-end
   * that starts without waiting for its back-end (QEMU's virtio-net over a vhost-user netdev,
   * which takes its link down while the socket is gone); others fail to start with it.
   */
  readonly reconnect?: boolean;
  /**
   * QEMU's front-end provides the configuration space itself and expects a back-end without
   * VHOST_USER_PROTOCOL_F_CONFIG, warning of one that offers it (hw/virtio/vhost-user.c): its
   * virtio-net over a vhost-user netdev and its vhost-user-scsi, whose spaces come from their own
   * properties. `run` serves such a device without offering CONFIG. By default it is so for a
   * type with a LocalModel (the VMM models that part of the device, configuration space included).
   */
  readonly frontEndConfig?: boolean;
  /**
   * QEMU's arguments for the front-end of the vhost-user back-end on chardev `chardev` (the
   * caller declares the chardev). Without it the VM gets the whole device over vfio-user.
   */
  vhostUser?(device: { readonly id: string; readonly chardev: string; readonly values: OptionValues }): string[];
}

/**
 * The part of a device a VMM implements itself when its back-end offers no vhost-user CONFIG
 * protocol feature (QEMU's virtio-net over vhost-user-net): see LocalDeviceModel in the
 * vhost-user front-end.
 */
export interface LocalModel {
  /** Device features of such a back-end passed on to the driver; the others are withheld. */
  readonly features: bigint;
  /** Queues the driver sees, instead of GET_QUEUE_NUM. */
  readonly queues: number;
}

/** The guest half, opened over any transport; the typed driver classes offer more. */
export interface GuestHalf {
  open(transport: DriverTransport, log?: Logger): Promise<{ readonly core: VirtioDriver; close(): Promise<void> }>;
}

/**
 * Random numbers a fuzz case draws for one well-formed request; a profile maps them onto a
 * request of its device (a sector, a length, a command), so the fuzzer needs no device knowledge.
 */
export interface ProbeSeed {
  readonly choice: number;
  readonly a: number;
  readonly b: number;
  /** 1..255: a byte pattern or a length. */
  readonly fill: number;
}

/** A well-formed request: its device-readable bytes, its writable length, and the answer's check. */
export interface Probe {
  readonly readable: Uint8Array;
  readonly writable: number;
  /** Why the device's answer (the writable part after completion, and the used length) is wrong, or undefined. */
  check(written: Uint8Array, usedLength: number): string | undefined;
  /**
   * On an event queue (the device fills posted buffers when the host has something, see
   * src/virtio/event-queue.ts): make the device have the one event this probe's buffer must
   * receive, once the buffer is posted. Without it the probe is a request the device answers.
   */
  deliver?(): void;
}

/** One device the fuzzer attacks, on in-memory back-ends. */
export interface FuzzSubject {
  readonly device: VirtioDevice;
  probe(seed: ProbeSeed): Probe;
  /**
   * On an event queue: make the device have one event to deliver (host input), so that buffers the
   * driver made available are popped and validated. Absent on request queues.
   */
  produce?(seed: ProbeSeed): void;
  /** Something the back-end must never have been asked (a disk range past the end), or undefined. */
  violation(): string | undefined;
}

/**
 * How the adversarial fuzzer (test/fuzz) attacks one queue of a device type: a hostile driver
 * sets up `queue` alone (the device's other queues stay disabled), garbles it, and checks that
 * the device still answers well-formed requests or sits in DEVICE_NEEDS_RESET.
 */
export interface FuzzProfile {
  /** For messages: "blk requestq". */
  readonly name: string;
  readonly queue: number;
  /** Smallest ring every probe fits in (a blk request takes a header and a status descriptor). */
  readonly minQueueSize: number;
  /**
   * Device feature bits the hostile driver leaves out though offered (it takes all the others):
   * console's MULTIPORT, without which port 0's receiveq runs with no control queue set up.
   */
  readonly withheldFeatures?: bigint;
  /** A fresh device whose back-end calls each take `delayTurns` microtask turns. */
  create(options: { readonly maxQueueSize: number; readonly delayTurns: number }): FuzzSubject;
}

/**
 * A guest driver as the hostile-device fuzzer (test/fuzz) drives it: the operations of its API,
 * started while the device misbehaves, each of which must complete or fail with a clear error.
 */
export interface DriverUnderTest {
  /** Start one operation of the driver's API, chosen by `seed` (a read, a send, a command). */
  operate(seed: ProbeSeed): Promise<unknown>;
  /** A promise the driver broke that only it can see (a request called back twice), or undefined. */
  violation?(): string | undefined;
  close(): Promise<void>;
}

/**
 * How the hostile-device fuzzer plays a device of the type against its guest driver: what an
 * honest device offers and answers, from which the fuzzer departs. A type without one is still
 * fuzzed: its driver is opened through `guest.open`, its posted buffers answered with random bytes.
 */
export interface DriverFuzzProfile {
  /** Device-specific feature bits an honest device offers (the fuzzer adds the ring features and lies). */
  readonly features: bigint;
  /** Queues an honest device has. */
  readonly queues: number;
  /** An honest configuration space (the fuzzer also offers random, short and changing ones). */
  config(seed: ProbeSeed): Uint8Array;
  open(transport: DriverTransport, log: Logger): Promise<DriverUnderTest>;
  /**
   * An honest device's answer to a buffer on queue `queue`: the bytes to write into its writable
   * part (at most `writable`). Without it the device writes random bytes.
   */
  respond?(queue: number, readable: Uint8Array, writable: number, seed: ProbeSeed): Uint8Array;
}

export interface DeviceType {
  /** The name on the command line and in logs: "blk". */
  readonly name: string;
  /** The specification's name and section: "virtio-blk (§5.2)". */
  readonly title: string;
  /** §5 device ID. */
  readonly deviceId: number;
  /** Names of the device-specific feature bits (§5.x "Feature bits"), for logs and `info`. */
  readonly featureNames: Readonly<Record<number, string>>;
  /** Feature dependencies (§5.x "Feature bit requirements"), which a driver must honour (§2.2.1). */
  readonly featureRequirements?: readonly FeatureRequirement[];
  /** The configuration space, when the device has one. */
  readonly config?: ConfigLayout<FieldSpecs>;
  readonly queues: readonly QueueRole[];
  readonly vhostUser: VhostUserCapabilities;
  readonly host: HostHalf;
  readonly guest: GuestHalf;
  readonly localModel?: LocalModel;
  /** How `paravirt run` attaches the type to its VM; a type without it is left out. */
  readonly qemu?: QemuAttachment;
  /** The queues the adversarial fuzzer attacks; loaded only by the fuzzer. */
  fuzz(): Promise<readonly FuzzProfile[]>;
  /** How the hostile-device fuzzer drives the guest half; loaded only by the fuzzer. */
  driverFuzz?(): Promise<DriverFuzzProfile>;
}

/** Endpoints a PCI device type's host half built for one `serve` command. */
export interface HostEndpoints {
  /** One PCI function per listening socket, in the order the sockets were given. */
  readonly endpoints: readonly PciEndpoint[];
  close(): Promise<void>;
}

/**
 * A PCI device that is not virtio (the QXL display): it brings its own PCI function — BARs,
 * registers, interrupts — so vfio-user serves it whole, and none of the virtio parts of a
 * DeviceType (queues, features, vhost-user, the virtio fuzzer) apply.
 */
export interface PciDeviceType {
  readonly name: string;
  /** The interface's name and where it is specified: "QXL display (spice-protocol qxl_dev.h)". */
  readonly title: string;
  readonly pci: { readonly vendorId: number; readonly deviceId: number; readonly classCode: number };
  readonly host: {
    readonly summary: string;
    readonly help?: string;
    readonly options: readonly OptionSpec[];
    /** Build the functions from parsed options; a bad value is an Error of one sentence naming it. */
    create(values: OptionValues, env: HostEnvironment): Promise<HostEndpoints>;
  };
}
