/**
 * What the dashboard shows of each hosted device and what it may do to it. Each device type
 * keeps its own host controls (balloon target, net link, SCSI LUNs, input events); this module
 * maps a browser's request onto them, and checks every field first: a page is a client like a
 * control socket's, whatever it sends is validated and answered with one sentence, never thrown.
 */
import { realpathSync } from 'node:fs';
import { resolve, sep } from 'node:path';
import { BalloonDevice, type BalloonStatus } from '../devices/balloon/device.ts';
import type { ControlReply, HostDevices } from '../devices/device-type.ts';
import { InputDevice } from '../devices/input/device.ts';
import { BUTTON_CODES } from '../devices/input/keys.ts';
import { TABLET_MAX } from '../devices/input/profile.ts';
import { Abs, EvType, Rel } from '../devices/input/wire.ts';
import { NetDevice } from '../devices/net/device.ts';
import type { CountersSnapshot } from '../virtio/counters.ts';
import { evdevKey } from './browser-keys.ts';

/** The part of a hosted device the dashboard uses (src/run/backend.ts HostedDevice). */
export interface DashboardDevice {
  readonly id: string;
  readonly type: { readonly name: string; readonly title: string };
  readonly instance: HostDevices;
}

/** One device as the page shows it. */
export interface DeviceView {
  readonly id: string;
  readonly type: string;
  readonly title: string;
  readonly counters: CountersSnapshot;
  /** What its controls act on now: the balloon's sizes, the link, the LUNs, the input kind. */
  readonly state: Readonly<Record<string, unknown>>;
}

function describe(d: DashboardDevice): Record<string, unknown> {
  const device = d.instance.devices[0];
  if (device instanceof BalloonDevice) return { ...(device.status() satisfies BalloonStatus) };
  if (device instanceof NetDevice) return { link: device.link };
  if (device instanceof InputDevice) return { kind: device.profile.kind };
  return {};
}

export function deviceView(d: DashboardDevice): DeviceView {
  return { id: d.id, type: d.type.name, title: d.type.title, counters: d.instance.devices[0].counters.snapshot(), state: describe(d) };
}

class RequestError extends Error {}

function field<T>(req: Record<string, unknown>, name: string, is: (v: unknown) => v is T, what: string): T {
  const v = req[name];
  if (!is(v)) throw new RequestError(`"${name}" must be ${what}.`);
  return v;
}
const isString = (v: unknown): v is string => typeof v === 'string';
const isBoolean = (v: unknown): v is boolean => typeof v === 'boolean';
const isInteger = (v: unknown): v is number => Number.isSafeInteger(v);
const isUnit = (v: unknown): v is number => typeof v === 'number' && v >= 0 && v <= 1;

/**
 * Applies browser requests to the hosted devices:
 *
 *   {"op":"balloon","device":ID,"bytes":N}                       the balloon's target size
 *   {"op":"link","device":ID,"up":true|false}                    a net device's link (and its socket)
 *   {"op":"lun","device":ID, ...}                                the scsi control request (attach, detach, list)
 *   {"op":"key","code":"KeyA","down":true|false}                 a key on the first keyboard
 *   {"op":"pointer","x":0..1,"y":0..1}                           absolute position on the first tablet
 *   {"op":"move","dx":N,"dy":N}                                  relative motion on the first mouse
 *   {"op":"button","button":"left|right|middle","down":bool}     a button on the first tablet or mouse
 *   {"op":"wheel","clicks":N}                                    the wheel of the first tablet or mouse
 */
/** What the controls need of the back-end (src/run/backend.ts Backend). */
export interface ControlledBackend {
  /** The VM's directory: the only place the dashboard attaches disk images from. */
  readonly dir: string;
  readonly devices: readonly DashboardDevice[];
  /** Stop serving a device's socket, or serve it again. */
  setListening(id: string, listening: boolean): Promise<void>;
}

export class DashboardControls {
  constructor(private readonly backend: ControlledBackend) {}

  /**
   * A page may attach only images in the VM's directory: anyone reaching the dashboard (any local
   * user, on loopback TCP) would otherwise hand the guest whatever file the back-end can open.
   * Symbolic links are resolved first, so a link there to a file elsewhere is refused too.
   */
  private imageInVmDir(lun: unknown): void {
    if (typeof lun !== 'string') return; // the scsi control request answers a missing path itself
    const path = lun.split(',')[0];
    const dir = realpathSync(this.backend.dir);
    let real: string;
    try {
      real = realpathSync(resolve(dir, path));
    } catch {
      throw new RequestError(`the image ${path} does not exist in the VM directory ${dir}.`);
    }
    if (!real.startsWith(dir + sep)) throw new RequestError(`the dashboard attaches only images in the VM directory ${dir}; ${path} is not there.`);
  }

  views(): DeviceView[] {
    return this.devices().map(deviceView);
  }

  private devices(): readonly DashboardDevice[] {
    return this.backend.devices;
  }

  /** Perform one request (a parsed JSON value); never throws. */
  async handle(request: unknown): Promise<ControlReply> {
    try {
      if (typeof request !== 'object' || request === null || Array.isArray(request)) throw new RequestError('a request is a JSON object.');
      return await this.perform(request as Record<string, unknown>);
    } catch (err) {
      return { ok: false, error: err instanceof Error ? err.message : String(err) };
    }
  }

  private async perform(req: Record<string, unknown>): Promise<ControlReply> {
    switch (req.op) {
      case 'balloon': {
        const balloon = this.device(req, BalloonDevice, 'a balloon');
        balloon.setTarget(field(req, 'bytes', isInteger, 'a whole number of bytes'));
        return { ok: true, status: balloon.status() };
      }
      case 'link': {
        const net = this.device(req, NetDevice, 'a net device');
        const up = field(req, 'up', isBoolean, 'true or false');
        net.setLink(up);
        // QEMU's virtio-net reads no link state from its back-end: it shows the guest the state
        // of the back-end's socket, so the socket goes away while the link is down.
        await this.backend.setListening(field(req, 'device', isString, 'a device id'), up);
        return { ok: true };
      }
      case 'lun': {
        const hosted = this.hosted(req);
        const control = hosted.instance.control;
        if (hosted.type.name !== 'scsi' || control === undefined) throw new RequestError(`device ${hosted.id} has no LUNs to plug.`);
        const { op: _op, device: _device, request: sub } = req;
        if (typeof sub !== 'object' || sub === null) throw new RequestError('"request" must be a scsi control request object.');
        if ((sub as { op?: unknown }).op === 'attach') this.imageInVmDir((sub as { lun?: unknown }).lun);
        return control(JSON.stringify(sub));
      }
      case 'key': {
        const code = evdevKey(field(req, 'code', isString, 'a KeyboardEvent code such as "KeyA"'));
        if (code === undefined) throw new RequestError(`the key ${JSON.stringify(req.code)} has no evdev code.`);
        return sent(this.input(['keyboard']).key(code, field(req, 'down', isBoolean, 'true or false')));
      }
      case 'pointer': {
        const at = (v: number): number => Math.round(v * TABLET_MAX);
        const [x, y] = [field(req, 'x', isUnit, 'a number from 0 to 1'), field(req, 'y', isUnit, 'a number from 0 to 1')];
        return sent(this.input(['tablet']).send([{ type: EvType.ABS, code: Abs.X, value: at(x) }, { type: EvType.ABS, code: Abs.Y, value: at(y) }]));
      }
      case 'move': {
        const [dx, dy] = [field(req, 'dx', isSmall, 'an integer'), field(req, 'dy', isSmall, 'an integer')];
        return sent(this.input(['mouse']).send([{ type: EvType.REL, code: Rel.X, value: dx }, { type: EvType.REL, code: Rel.Y, value: dy }]));
      }
      case 'button': {
        const name = field(req, 'button', isString, 'left, right or middle');
        if (!Object.hasOwn(BUTTON_CODES, name)) throw new RequestError('"button" must be left, right or middle.');
        return sent(this.input(['tablet', 'mouse']).key(BUTTON_CODES[name], field(req, 'down', isBoolean, 'true or false')));
      }
      case 'wheel':
        return sent(this.input(['tablet', 'mouse']).send([{ type: EvType.REL, code: Rel.WHEEL, value: field(req, 'clicks', isSmall, 'an integer') }]));
      default:
        throw new RequestError('"op" must be balloon, link, lun, key, pointer, move, button or wheel.');
    }
  }

  private hosted(req: Record<string, unknown>): DashboardDevice {
    const id = field(req, 'device', isString, 'a device id');
    const hosted = this.devices().find((d) => d.id === id);
    if (hosted === undefined) throw new RequestError(`there is no device ${JSON.stringify(id)}.`);
    return hosted;
  }

  private device<T>(req: Record<string, unknown>, kind: abstract new (...args: never[]) => T, what: string): T {
    const hosted = this.hosted(req);
    const device = hosted.instance.devices[0];
    if (!(device instanceof kind)) throw new RequestError(`device ${hosted.id} is not ${what}.`);
    return device;
  }

  /** The first input device of one of `kinds`, in that order of preference. */
  private input(kinds: readonly string[]): InputDevice {
    const inputs = this.devices().flatMap((d) => d.instance.devices).filter((d): d is InputDevice => d instanceof InputDevice);
    for (const kind of kinds) {
      const found = inputs.find((d) => d.profile.kind === kind);
      if (found !== undefined) return found;
    }
    throw new RequestError(`there is no ${kinds.join(' or ')} device.`);
  }
}

/** Relative motion and wheel clicks: integers small enough for one event's 32-bit value. */
function isSmall(v: unknown): v is number {
  return Number.isInteger(v) && Math.abs(v as number) <= 0xffff;
}

function sent(ok: boolean): ControlReply {
  return ok ? { ok: true } : { ok: false, error: 'the event was dropped: no driver is running or the guest posted no buffers.' };
}
