/**
 * Keys from a raw terminal to the guest's console, as `paravirt run` reads them: Ctrl-C stops
 * the VM (the terminal sends no SIGINT in raw mode), so the guest gets a Ctrl-C as Ctrl-A c, and
 * a Ctrl-A as Ctrl-A Ctrl-A (QEMU's -nographic uses the same escape key).
 */
import { Transform, type TransformCallback } from 'node:stream';

const CTRL_A = 0x01;
const CTRL_C = 0x03;

/**
 * Keys from the terminal to the guest: Ctrl-C calls `stop` instead; Ctrl-A c sends Ctrl-C and
 * Ctrl-A Ctrl-A sends Ctrl-A.
 */
export class TerminalKeys extends Transform {
  private escape = false;

  constructor(private readonly stop: () => void) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    const out: number[] = [];
    for (const byte of chunk) {
      if (this.escape) {
        this.escape = false;
        if (byte === 0x63 || byte === 0x43) out.push(CTRL_C);
        else if (byte === CTRL_A) out.push(CTRL_A);
        else out.push(CTRL_A, byte);
      } else if (byte === CTRL_A) this.escape = true;
      else if (byte === CTRL_C) this.stop();
      else out.push(byte);
    }
    done(null, out.length === 0 ? undefined : Buffer.from(out));
  }
}
