/**
 * One console port shared by several host viewers: the terminal `paravirt run` was started on,
 * a browser, a test. Every viewer sees all the guest's output (a console port has one host
 * client, ConsolePort.attach, which this is), and what any viewer types goes to the guest.
 *
 * Nothing is lost: guest output is written to every viewer, and while one of them is full the
 * port stops taking more from the guest (its transmit buffers wait in the ring) until all have
 * drained. Input from the viewers is merged with back-pressure from the port's receive queue.
 * The last bytes of output are kept so that a viewer connecting late sees the current screen.
 */
import { PassThrough, type Readable, Writable } from 'node:stream';
import { drained, type HostLink } from '../devices/console/port.ts';

/** Output kept for viewers that connect later: enough for a screenful and its scrollback. */
const HISTORY_BYTES = 64 * 1024;

export interface ConsoleViewer {
  /** Where the guest's output goes. */
  readonly output: Writable;
  /** What the viewer types, if it types. */
  readonly input?: Readable;
}

export class SharedConsole {
  /** The host client the console port is attached to. */
  readonly link: HostLink;
  private readonly viewers = new Set<Writable>();
  private readonly input = new PassThrough();
  private history: Buffer[] = [];
  private historyBytes = 0;

  constructor() {
    const output = new Writable({
      write: (chunk: Buffer, _encoding, done) => this.broadcast(chunk).then(() => done()),
    });
    this.link = { input: this.input, output };
  }

  /**
   * Show the console to `viewer` (first the recent output when `replay`), and take its input.
   * Returns how to disconnect it; a viewer whose output closes is disconnected by itself.
   */
  connect(viewer: ConsoleViewer, options: { replay?: boolean } = {}): () => void {
    const { output, input } = viewer;
    if (options.replay === true && this.historyBytes > 0) output.write(Buffer.concat(this.history));
    this.viewers.add(output);
    input?.pipe(this.input, { end: false });
    const disconnect = (): void => {
      output.off('close', disconnect);
      this.viewers.delete(output);
      input?.unpipe(this.input);
    };
    output.once('close', disconnect);
    return disconnect;
  }

  /** Recent guest output, oldest first. */
  recent(): Buffer {
    return Buffer.concat(this.history);
  }

  /** Write `chunk` to every viewer; settles when all that were full have drained (or gone). */
  private async broadcast(chunk: Buffer): Promise<void> {
    this.remember(chunk);
    const full: Writable[] = [];
    for (const out of this.viewers) if (!out.write(chunk)) full.push(out);
    await Promise.all(full.map(drained));
  }

  private remember(chunk: Buffer): void {
    this.history.push(chunk);
    this.historyBytes += chunk.length;
    while (this.historyBytes - this.history[0].length >= HISTORY_BYTES) this.historyBytes -= this.history.shift()!.length;
  }
}
