/**
 * virtio-blk under the adversarial fuzzer (test/fuzz): a 16-sector disk in memory whose calls
 * are delayed, so requests stay in flight across the hostile driver's actions, and which records
 * any range the device asked for outside the disk (every request must be checked against the
 * capacity first, §5.2.6.2). Probes are reads, writes, flushes and GET_ID, checked byte for byte.
 */
import type { FuzzProfile, FuzzSubject, Probe, ProbeSeed } from '../device-type.ts';
import { type BlockBackend, Op, type TransferDone } from '../../storage/block-backend.ts';
import { BlkDevice } from './device.ts';
import { MemoryBackend } from '../../storage/memory-backend.ts';
import { BlkStatus, ID_SIZE, RequestType, SECTOR_SIZE, encodeRequestHeader } from './wire.ts';

const DISK_SECTORS = 16;

/** A backend that also records every range outside the disk the device asked for. */
class CheckedBackend implements BlockBackend {
  readonly inner = new MemoryBackend(DISK_SECTORS * SECTOR_SIZE);
  readonly outOfRange: string[] = [];

  constructor(private readonly delayTurns: number) {}

  private async later(): Promise<void> {
    for (let i = 0; i < this.delayTurns; i++) await null;
  }

  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get canUnmap(): boolean {
    return this.inner.canUnmap;
  }

  private check(what: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || length < 0 || offset + length > this.size) {
      this.outOfRange.push(`${what} of ${length} bytes at ${offset}`);
    }
  }

  async read(offset: number, segs: readonly Uint8Array[]): Promise<void> {
    this.check('read', offset, total(segs));
    await this.later();
    return this.inner.read(offset, segs);
  }
  async write(offset: number, segs: readonly Uint8Array[]): Promise<void> {
    this.check('write', offset, total(segs));
    await this.later();
    return this.inner.write(offset, segs);
  }
  transfer<T>(op: Op, offset: number, segs: readonly Uint8Array[], done: TransferDone<T>, tag: T): void {
    (op === Op.read ? this.read(offset, segs) : this.write(offset, segs)).then(
      () => done(tag, undefined),
      (err: Error) => done(tag, err),
    );
  }
  async flush(): Promise<void> {
    await this.later();
    return this.inner.flush();
  }
  async discard(offset: number, length: number): Promise<void> {
    this.check('discard', offset, length);
    await this.later();
    return this.inner.discard(offset, length);
  }
  async writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    this.check('write zeroes', offset, length);
    await this.later();
    return this.inner.writeZeroes(offset, length, mayUnmap);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

function total(segs: readonly Uint8Array[]): number {
  return segs.reduce((n, s) => n + s.length, 0);
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

const TYPES = [RequestType.IN, RequestType.OUT, RequestType.FLUSH, RequestType.GET_ID] as const;

/** A request of one or two sectors inside the disk, of the type `choice` picks. */
function probe(disk: Uint8Array, seed: ProbeSeed): Probe {
  const type = TYPES[seed.choice % TYPES.length];
  const sectors = 1 + (seed.b % 2);
  const sector = seed.a % (DISK_SECTORS - sectors + 1);
  const dataLen = sectors * SECTOR_SIZE;
  const offset = sector * SECTOR_SIZE;
  const header = encodeRequestHeader({ type, reserved: 0, sector });
  const data = new Uint8Array(type === RequestType.OUT ? dataLen : 0).fill(seed.fill);
  const readable = new Uint8Array(header.length + data.length);
  readable.set(header);
  readable.set(data, header.length);
  const inLen = type === RequestType.IN ? dataLen : type === RequestType.GET_ID ? ID_SIZE : 0;
  const writable = inLen + 1;
  return {
    readable,
    writable,
    check(written, usedLength) {
      const status = written[inLen];
      if (status !== BlkStatus.OK) return `status ${status}`;
      if (usedLength !== writable) return `used length ${usedLength}, expected ${writable}`;
      if (type === RequestType.IN && !equal(written.subarray(0, inLen), disk.subarray(offset, offset + dataLen))) return 'data read differs from the disk';
      if (type === RequestType.OUT && !equal(disk.subarray(offset, offset + dataLen), data)) return 'the disk does not hold the data written';
      return undefined;
    },
  };
}

export const BLK_FUZZ: readonly FuzzProfile[] = [
  {
    name: 'blk requestq',
    queue: 0,
    // A request needs a readable header and a writable status: two descriptors at least.
    minQueueSize: 2,
    create({ maxQueueSize, delayTurns }): FuzzSubject {
      const backend = new CheckedBackend(delayTurns);
      const device = new BlkDevice({
        backend,
        queueSize: maxQueueSize,
        features: { packed: true, eventIdx: true, indirect: true, inOrder: true },
      });
      return {
        device,
        probe: (seed) => probe(backend.inner.bytes, seed),
        violation: () => (backend.outOfRange.length === 0 ? undefined : `the disk backend was asked for a ${backend.outOfRange[0]}, outside the disk`),
      };
    },
  },
];
