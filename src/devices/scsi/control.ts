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
import { createServer, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';
import { FileBackend } from '../../storage/file-backend.ts';
import type { IoThreads } from '../../storage/io-thread.ts';
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
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly device: ScsiDevice,
    private readonly threads: IoThreads,
    readonly path: string,
  ) {
    this.server = createServer((socket) => this.connection(socket));
  }

  static async listen(device: ScsiDevice, threads: IoThreads, path: string): Promise<ScsiControl> {
    const control = new ScsiControl(device, threads, path);
    await new Promise<void>((resolve, reject) => {
      control.server.once('error', reject);
      control.server.listen(path, () => resolve());
    });
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
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    let buffered = '';
    let chain = Promise.resolve();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      if (buffered.length > MAX_LINE && !buffered.includes('\n')) {
        socket.destroy();
        return;
      }
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        // One request at a time per connection, answered in order.
        chain = chain.then(async () => {
          const reply = await this.handle(line);
          if (!socket.destroyed) socket.write(`${JSON.stringify(reply)}\n`);
        });
      }
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    rmSync(this.path, { force: true });
  }
}
