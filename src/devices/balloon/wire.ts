/**
 * The memory balloon's wire format (§5.5), shared by the device and the driver: feature bits,
 * the configuration space, the page frame numbers of the inflate and deflate queues, and the
 * statistics records of the stats queue.
 */
import { ConfigLayout, type ValuesOf } from '../../virtio/config-layout.ts';
import { featureBit } from '../../virtio/constants.ts';

/** §5.5.3 feature bits. */
export const BalloonFeature = {
  /** The host must be told before a page leaves the balloon's control (§5.5.6.1). */
  MUST_TELL_HOST: 0,
  /** A statistics queue is present (§5.5.6.3). */
  STATS_VQ: 1,
  /** The guest deflates when it runs out of memory. */
  DEFLATE_ON_OOM: 2,
  /** A free page hint queue is present and free_page_hint_cmd_id is valid (§5.5.6.4). */
  FREE_PAGE_HINT: 3,
  /** poison_val is valid: the value the guest expects in pages it gets back (§5.5.6.5). */
  PAGE_POISON: 4,
  /** A free page reporting queue is present (§5.5.6.6). */
  PAGE_REPORTING: 5,
} as const;

export const BALLOON_FEATURE_NAMES: Readonly<Record<number, string>> = {
  [BalloonFeature.MUST_TELL_HOST]: 'MUST_TELL_HOST',
  [BalloonFeature.STATS_VQ]: 'STATS_VQ',
  [BalloonFeature.DEFLATE_ON_OOM]: 'DEFLATE_ON_OOM',
  [BalloonFeature.FREE_PAGE_HINT]: 'FREE_PAGE_HINT',
  [BalloonFeature.PAGE_POISON]: 'PAGE_POISON',
  [BalloonFeature.PAGE_REPORTING]: 'PAGE_REPORTING',
};

/** The features the device offers: everything but free page hinting (a migration aid, not served). */
export const BALLOON_DEVICE_FEATURES: bigint =
  featureBit(BalloonFeature.MUST_TELL_HOST) |
  featureBit(BalloonFeature.STATS_VQ) |
  featureBit(BalloonFeature.DEFLATE_ON_OOM) |
  featureBit(BalloonFeature.PAGE_POISON) |
  featureBit(BalloonFeature.PAGE_REPORTING);

/**
 * §5.5.6: page frame numbers always count 4096-byte pages (VIRTIO_BALLOON_PFN_SHIFT), whatever
 * page size guest or host use.
 */
export const BALLOON_PAGE_SIZE = 4096;
export const PFN_SIZE = 4;

/** `struct virtio_balloon_config` (§5.5.4). */
export const BALLOON_CONFIG = new ConfigLayout(
  'virtio-balloon',
  {
    /** Set by the device: the balloon size it wants, in 4 KiB pages. */
    numPages: { offset: 0, width: 4, about: '4 KiB pages the host asks for' },
    /** Written by the driver: pages in the balloon now. */
    actual: { offset: 4, width: 4, about: '4 KiB pages in the balloon' },
    freePageHintCmdId: { offset: 8, width: 4, feature: BalloonFeature.FREE_PAGE_HINT },
    poisonVal: { offset: 12, width: 4, feature: BalloonFeature.PAGE_POISON },
  },
  16,
);

export type BalloonConfig = ValuesOf<typeof BALLOON_CONFIG>;

/**
 * Queue roles in index order (§5.5.2). A queue whose feature was not negotiated does not exist
 * and the later ones move down: Linux and QEMU number them so (statsq is index 2 only with
 * STATS_VQ, reporting_vq follows whichever came before it).
 */
export type BalloonQueue = 'inflate' | 'deflate' | 'stats' | 'freePageHint' | 'reporting';

/** The index of each queue that exists under `features`. */
export function balloonQueues(features: bigint): Partial<Record<BalloonQueue, number>> {
  const has = (bit: number): boolean => (features & featureBit(bit)) !== 0n;
  const out: Partial<Record<BalloonQueue, number>> = { inflate: 0, deflate: 1 };
  let next = 2;
  if (has(BalloonFeature.STATS_VQ)) out.stats = next++;
  if (has(BalloonFeature.FREE_PAGE_HINT)) out.freePageHint = next++;
  if (has(BalloonFeature.PAGE_REPORTING)) out.reporting = next;
  return out;
}

/** §5.5.6.3: one statistic, `struct virtio_balloon_stat { le16 tag; le64 val; }`, packed. */
export const STAT_SIZE = 10;

/** A statistic's name and unit, by tag (§5.5.6.3.1; tags 10-15 added after 1.2, as Linux sends them). */
export const STAT_TAGS: Readonly<Record<number, { readonly name: string; readonly unit: 'bytes' | 'events' | 'pages' }>> = {
  0: { name: 'swap-in', unit: 'bytes' },
  1: { name: 'swap-out', unit: 'bytes' },
  2: { name: 'major-faults', unit: 'events' },
  3: { name: 'minor-faults', unit: 'events' },
  4: { name: 'free-memory', unit: 'bytes' },
  5: { name: 'total-memory', unit: 'bytes' },
  6: { name: 'available-memory', unit: 'bytes' },
  7: { name: 'disk-caches', unit: 'bytes' },
  8: { name: 'hugetlb-allocations', unit: 'events' },
  9: { name: 'hugetlb-failures', unit: 'events' },
  10: { name: 'oom-kills', unit: 'events' },
  11: { name: 'alloc-stalls', unit: 'events' },
  12: { name: 'async-scans', unit: 'pages' },
  13: { name: 'direct-scans', unit: 'pages' },
  14: { name: 'async-reclaims', unit: 'pages' },
  15: { name: 'direct-reclaims', unit: 'pages' },
};

export const StatTag = {
  SWAP_IN: 0,
  SWAP_OUT: 1,
  MAJOR_FAULTS: 2,
  MINOR_FAULTS: 3,
  MEMFREE: 4,
  MEMTOT: 5,
  AVAIL: 6,
  CACHES: 7,
} as const;

export interface BalloonStat {
  readonly tag: number;
  /** A 64-bit value; numbers are exact below 2^53, far above any memory size or count. */
  readonly value: number;
}

/**
 * Decode a stats buffer: whole records only, a trailing partial record ignored. Tags are kept as
 * sent; the device ignores those it does not know (§5.5.6.3.1), as a later driver sends more.
 */
export function decodeStats(bytes: Uint8Array): BalloonStat[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: BalloonStat[] = [];
  for (let at = 0; at + STAT_SIZE <= bytes.length; at += STAT_SIZE) {
    const lo = v.getUint32(at + 2, true);
    const hi = v.getUint32(at + 6, true);
    out.push({ tag: v.getUint16(at, true), value: hi * 0x1_0000_0000 + lo });
  }
  return out;
}

export function encodeStats(stats: readonly BalloonStat[]): Uint8Array {
  const out = new Uint8Array(stats.length * STAT_SIZE);
  const v = new DataView(out.buffer);
  stats.forEach((s, i) => {
    v.setUint16(i * STAT_SIZE, s.tag, true);
    v.setBigUint64(i * STAT_SIZE + 2, BigInt(s.value), true);
  });
  return out;
}

/** Encode page frame numbers as an inflate or deflate buffer: le32 each (§5.5.6). */
export function encodePfns(pfns: readonly number[]): Uint8Array {
  const out = new Uint8Array(pfns.length * PFN_SIZE);
  const v = new DataView(out.buffer);
  pfns.forEach((p, i) => v.setUint32(i * PFN_SIZE, p, true));
  return out;
}
