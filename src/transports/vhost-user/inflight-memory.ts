/**
 * The shared memory of the inflight region (inflight.ts) a back-end uses: allocated for the
 * front-end (GET_INFLIGHT_FD) or handed back by it after a restart (SET_INFLIGHT_FD). Every shape,
 * size and offset comes from the front-end and is checked before anything is mapped; only the
 * bytes the shape needs are mapped.
 */
import type { Logger } from 'pino';
import { InflightRegion, inflightShapeError } from './inflight.ts';
import type { MapRegion, RegionMapping } from './memory-table.ts';

/** The front-end asked for a region that cannot be. */
export class InflightError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InflightError';
  }
}

/** What the region needs from the operating system (a subset of BackendPorts). */
export interface InflightPorts {
  readonly mapRegion: MapRegion;
  /** A new shared-memory file of `size` zero bytes; returns its descriptor. */
  createSharedMemory(name: string, size: number): number;
  close(fd: number): void;
}

/** GET_INFLIGHT_FD's answer: the region's shape and its descriptor, which the reply carries away. */
export interface InflightReply {
  readonly mmapSize: bigint;
  readonly numQueues: number;
  readonly queueSize: number;
  readonly fd: number;
}

export class InflightMemory {
  private current: { readonly region: InflightRegion; readonly mapping: RegionMapping } | undefined;

  constructor(
    private readonly ports: InflightPorts,
    /** Names the shared-memory file, so the region is recognisable in /proc/PID/maps. */
    private readonly name: string,
    /** The device's queue count: no region is for more rings. */
    private readonly maxQueues: number,
    private readonly log: Logger,
  ) {}

  /** The region in use, if any. */
  get region(): InflightRegion | undefined {
    return this.current?.region;
  }

  /**
   * GET_INFLIGHT_FD: allocate a zeroed region for `numQueues` rings of up to `queueSize` entries
   * in the layout of `packed` rings, start using it, and give its descriptor to the caller, who
   * closes it once the reply is sent.
   */
  allocate(numQueues: number, queueSize: number, packed: boolean): InflightReply {
    this.checkShape(numQueues, queueSize);
    const size = InflightRegion.byteLength(numQueues, queueSize, packed);
    const fd = this.ports.createSharedMemory(`${this.name}-inflight`, size);
    try {
      this.use(this.ports.mapRegion(fd, 0, size), numQueues, queueSize, packed);
    } catch (err) {
      this.ports.close(fd);
      throw err;
    }
    return { mmapSize: BigInt(size), numQueues, queueSize, fd };
  }

  /**
   * SET_INFLIGHT_FD: use the region the front-end kept, which may hold the records of a
   * predecessor that crashed, if the file really holds the shape it claims.
   */
  adopt(mmapSize: bigint, mmapOffset: bigint, numQueues: number, queueSize: number, packed: boolean, fd: number): void {
    this.checkShape(numQueues, queueSize);
    const size = InflightRegion.byteLength(numQueues, queueSize, packed);
    if (mmapSize < BigInt(size)) {
      throw new InflightError(`inflight region of ${mmapSize} bytes, fewer than the ${size} its ${numQueues} queues of ${queueSize} entries need`);
    }
    if (mmapOffset > BigInt(Number.MAX_SAFE_INTEGER - size)) {
      throw new InflightError(`inflight region offset 0x${mmapOffset.toString(16)} is beyond 2^53`);
    }
    let mapping: RegionMapping;
    try {
      mapping = this.ports.mapRegion(fd, Number(mmapOffset), size);
    } catch (err) {
      throw new InflightError(`inflight region cannot be mapped: ${(err as Error).message}`);
    }
    this.use(mapping, numQueues, queueSize, packed);
  }

  /** Stop using the region and unmap it. */
  drop(): void {
    this.current?.mapping.unmap();
    this.current = undefined;
  }

  private checkShape(numQueues: number, queueSize: number): void {
    const error = inflightShapeError(numQueues, queueSize, this.maxQueues);
    if (error !== undefined) throw new InflightError(error);
  }

  private use(mapping: RegionMapping, numQueues: number, queueSize: number, packed: boolean): void {
    this.drop();
    this.current = { region: new InflightRegion(mapping.bytes, numQueues, queueSize, packed), mapping };
    this.log.info({ numQueues, queueSize, packed }, 'inflight region in use');
  }
}
