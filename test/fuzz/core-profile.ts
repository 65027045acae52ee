/**
 * The generic driver core under the hostile-device fuzzer, without any device type on top:
 * VirtioDriver.start over up to three queues with every ring feature the framework implements,
 * indirect tables, and RequestQueue requests kept by the caller (`start`) whose callbacks are
 * counted, so a request completed twice, completed after failing, or completed with more bytes
 * than it offered is seen here even where a promise would hide it.
 */
import type { DriverUnderTest, ProbeSeed } from '../../src/devices/device-type.ts';
import { VirtioDriver } from '../../src/virtio/driver-core.ts';
import { FRAMEWORK_FEATURES } from '../../src/virtio/features.ts';
import type { QueueRequest } from '../../src/virtio/request-queue.ts';
import type { Segment } from '../../src/virtio/queue.ts';
import type { NamedDriverProfile } from './driver-scenario.ts';

/** A device id no registered type uses, so the core is fuzzed on its own. */
const CORE_DEVICE_ID = 0x7ff;
const QUEUES = 3;

/** A request whose callbacks are counted. */
class CountedRequest implements QueueRequest {
  calls = 0;
  broken: string | undefined;

  constructor(
    readonly out: readonly Segment[],
    readonly inSegs: readonly Segment[],
    private readonly writable: number,
    private readonly settle: (err?: Error) => void,
  ) {}

  completed(len: number): void {
    if (++this.calls > 1) this.broken = `a request was called back ${this.calls} times`;
    else if (!Number.isSafeInteger(len) || len < 0 || len > this.writable) this.broken = `a request completed with ${len} bytes written into ${this.writable}`;
    this.settle();
  }

  failed(err: Error): void {
    if (++this.calls > 1) this.broken = `a request was called back ${this.calls} times (the last a failure: ${err.message})`;
    this.settle(err);
  }
}

/** `total` bytes at `addr` as 1-3 segments, by `parts`. */
function segments(addr: number, total: number, parts: number): Segment[] {
  if (total === 0) return [];
  const n = Math.min(parts, total);
  const out: Segment[] = [];
  let at = 0;
  for (let i = 0; i < n; i++) {
    const len = i === n - 1 ? total - at : Math.floor(total / n);
    out.push({ addr: addr + at, len });
    at += len;
  }
  return out;
}

class CoreUnderTest implements DriverUnderTest {
  private readonly requests: CountedRequest[] = [];

  constructor(private readonly driver: VirtioDriver) {}

  async operate(seed: ProbeSeed): Promise<unknown> {
    // One in eight operations reads the configuration space instead (the generation loop).
    if (seed.choice % 8 === 7) return this.driver.readConfig(seed.a % 64, seed.b % 64);
    const queue = this.driver.queue(seed.choice % QUEUES);
    const readable = seed.a % 300;
    const writable = seed.b % 300;
    const { dma } = this.driver.transport;
    const addr = dma.alloc(readable + writable + 1, 8);
    if (addr === undefined) throw new Error('core: DMA memory exhausted');
    return new Promise<void>((resolve, reject) => {
      const req = new CountedRequest(
        segments(addr, readable, 1 + (seed.fill % 3)),
        segments(addr + readable, writable, 1 + ((seed.fill >> 2) % 3)),
        writable,
        (err) => {
          // Only on the first call back: the buffer may be reused once the request is done.
          if (req.calls === 1) dma.free(addr);
          if (err === undefined) resolve();
          else reject(err);
        },
      );
      this.requests.push(req);
      queue.start(req);
    });
  }

  violation(): string | undefined {
    return this.requests.find((r) => r.broken !== undefined)?.broken;
  }

  close(): Promise<void> {
    return this.driver.close();
  }
}

export const CORE_PROFILE: NamedDriverProfile = {
  name: 'core',
  deviceId: CORE_DEVICE_ID,
  features: 0n,
  queues: QUEUES,
  config: (seed) => new Uint8Array(64).fill(seed.fill),
  async open(transport, log) {
    const driver = await VirtioDriver.start(transport, {
      name: 'core',
      deviceId: CORE_DEVICE_ID,
      features: FRAMEWORK_FEATURES,
      queues: QUEUES,
      indirectSegments: 3,
      log,
    });
    return new CoreUnderTest(driver);
  },
};
