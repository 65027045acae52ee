/**
 * The control interface of a running `paravirt serve scsi`: a Unix socket taking one JSON request
 * per line and answering one JSON line each, so LUNs can be hot-plugged, hot-unplugged and resized
 * while the guest runs (`paravirt scsi --control-socket S attach|detach|resize` is its client).
 *
 *   {"op":"attach","lun":"FILE[,ro][,serial=S]","target":T,"number":L}   → {"ok":true}
 *   {"op":"detach","target":T,"number":L}                                → {"ok":true}
 *   {"op":"resize","target":T,"number":L}  (the image file grew or shrank) → {"ok":true,"sectors":N}
 *   {"op":"list"}                                   → {"ok":true,"luns":[{"target","number","sectors","readOnly","serial"}]}
 *
 * A bad request is answered {"ok":false,"error":"one sentence"}; the connection and the device
 * go on. Whoever can connect to the socket controls the LUNs: protect it like the vhost-user one.
 */
import type { Socket } from 'node:net';
import { FileBackend } from '../../storage/file-backend.ts';
import type { IoThreads } from '../../storage/io-thread.ts';
import { type LocalServer, listenLocal, readLines } from '../local-socket.ts';
import { parseLunSpec } from './descriptor.ts';
import type { ScsiDevice } from './device.ts';
import { openDisk } from './luns.ts';
import { MAX_LUN, MAX_TARGET, type LunAddress } from './wire.ts';

/** Longest request line accepted; a longer one closes the connection. */
const MAX_LINE = 64 * 1024;

export type ControlReply = { readonly ok: true; readonly [key: string]: unknown } | { readonly ok: false; readonly error: string };

function address(req: Record<string, unknown>): LunAddress {
  const { target, number } = req;
  if (typeof target !== 'number' || !Number.isInteger(target) || target < 0 || target > MAX_TARGET) throw new Error(`"target" must be an integer from 0 to ${MAX_TARGET}.`);
  if (typeof number !== 'number' || !Number.isInteger(number) || number < 0 || number > MAX_LUN) throw new Error(`"number" must be an integer from 0 to ${MAX_LUN}.`);
  return { target, lun: number };
}

export class ScsiControl {
  private server: LocalServer | undefined;

  /** The controls for a caller in the same process (a dashboard): handle() without a socket. */
  constructor(
    private readonly device: ScsiDevice,
    private readonly threads: IoThreads,
  ) {}

  static async listen(device: ScsiDevice, threads: IoThreads, path: string): Promise<ScsiControl> {
    const control = new ScsiControl(device, threads);
    control.server = await listenLocal(path, 'scsi control socket', (socket) => control.connection(socket));
    return control;
  }

  /** Perform one request; never throws. */
  async handle(line: string): Promise<ControlReply> {
    try {
      const req: unknown = JSON.parse(line);
      if (typeof req !== 'object' || req === null || Array.isArray(req)) throw new Error('a request is a JSON object.');
      const r = req as Record<string, unknown>;
      switch (r.op) {
        case 'attach': {
          if (typeof r.lun !== 'string') throw new Error('"lun" must be "FILE[,ro][,serial=S]".');
          const spec = parseLunSpec(r.lun);
          const at = address(r);
          if (this.device.targets.get(at) !== undefined) throw new Error(`LUN ${at.target}:${at.lun} is already attached.`);
          this.device.attach(at, await openDisk(spec, at, this.threads));
          return { ok: true };
        }
        case 'detach': {
          const disk = await this.device.detach(address(r));
          await disk.storage.close();
          return { ok: true };
        }
        case 'resize': {
          const at = address(r);
          const disk = this.device.targets.get(at);
          if (disk === undefined) throw new Error(`no LUN ${at.target}:${at.lun} is attached.`);
          const current = disk.storage;
          if (!(current instanceof FileBackend)) throw new Error(`LUN ${at.target}:${at.lun} is not an image file.`);
          const reopened = await FileBackend.open(current.path, { readOnly: current.readOnly, sharedThreads: this.threads });
          try {
            await this.device.resize(at, reopened).close();
          } catch (err) {
            await reopened.close();
            throw err;
          }
          return { ok: true, sectors: reopened.size / 512 };
        }
        case 'list':
          return {
            ok: true,
            luns: this.device.targets.entries().map((e) => ({ target: e.address.target, number: e.address.lun, sectors: e.disk.blocks, readOnly: e.disk.readOnly, serial: e.disk.serial })),
          };
        default:
          throw new Error('"op" must be attach, detach, resize or list.');
      }
    } catch (err) {
      return { ok: false, error: err instanceof Error ? err.message : String(err) };
    }
  }

  private connection(socket: Socket): void {
    let chain = Promise.resolve();
    readLines(
      socket,
      MAX_LINE,
      (line) => {
        // One request at a time per connection, answered in order.
        chain = chain.then(async () => {
          const reply = await this.handle(line);
          if (!socket.destroyed) socket.write(`${JSON.stringify(reply)}\n`);
        });
      },
      () => socket.destroy(),
    );
  }

  async close(): Promise<void> {
    await this.server?.close();
  }
}
