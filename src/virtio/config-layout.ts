/**
 * A device's configuration space (§2.5, and each device type's "Device configuration layout"),
 * declared once as a table of fields — name, offset, width, the feature that gives it meaning —
 * from which both halves derive the byte offsets, encoding, decoding, bounds and the names that
 * logs and `info` print. The space is little-endian (§2.5: "fields are little-endian" for
 * modern devices).
 *
 * 64-bit fields are JavaScript numbers, as guest addresses and sector numbers are (see
 * memory.ts): a value of 2^53 or more is not exact, but stays at or above 2^53.
 */
import { describeFeatures } from './features.ts';
import { featureBit } from './constants.ts';

/** An integer field of 1, 2, 4 or 8 bytes, or a byte array of `bytes` bytes (a MAC address, a name). */
export type FieldSpec =
  | { readonly offset: number; readonly width: 1 | 2 | 4 | 8; readonly feature?: number; readonly about?: string }
  | { readonly offset: number; readonly bytes: number; readonly feature?: number; readonly about?: string };

export type FieldSpecs = Readonly<Record<string, FieldSpec>>;

/** The values of a layout's fields: numbers, and Uint8Array for byte arrays. */
export type ConfigValues<F extends FieldSpecs> = {
  -readonly [K in keyof F]: F[K] extends { readonly bytes: number } ? Uint8Array : number;
};

/** The values type of a layout: `ValuesOf<typeof BLK_CONFIG>`. */
export type ValuesOf<L> = L extends ConfigLayout<infer F> ? ConfigValues<F> : never;

/** One field as a decoder or printer sees it. */
export interface ConfigField {
  readonly name: string;
  readonly offset: number;
  readonly size: number;
  readonly bytes: boolean;
  readonly feature: number | undefined;
  readonly about: string | undefined;
}

const U32 = 0x1_0000_0000;

function fieldSize(spec: FieldSpec): number {
  return 'width' in spec ? spec.width : spec.bytes;
}

export class ConfigLayout<F extends FieldSpecs> {
  /** Fields in offset order. */
  readonly fields: readonly ConfigField[];
  /** Byte offset of each field. */
  readonly offset: { readonly [K in keyof F]: number };

  /**
   * `size` is the space the device serves (padding included); it defaults to the end of the last
   * field. Fields must fit inside it and must not overlap: a mistake here is a programming error.
   */
  constructor(
    /** The device type, for messages: "virtio-blk". */
    readonly device: string,
    specs: F,
    readonly size: number = Math.max(0, ...Object.values(specs).map((s) => s.offset + fieldSize(s))),
  ) {
    const fields = Object.entries(specs)
      .map(([name, s]) => ({ name, offset: s.offset, size: fieldSize(s), bytes: 'bytes' in s, feature: s.feature, about: s.about }))
      .sort((a, b) => a.offset - b.offset);
    let end = 0;
    for (const f of fields) {
      if (!Number.isInteger(f.offset) || f.offset < end || f.offset + f.size > size || f.size < 1) {
        throw new RangeError(`${device} configuration field ${f.name} at ${f.offset} (${f.size} bytes) overlaps another or leaves the ${size}-byte space`);
      }
      end = f.offset + f.size;
    }
    this.fields = fields;
    this.offset = Object.fromEntries(fields.map((f) => [f.name, f.offset])) as { readonly [K in keyof F]: number };
  }

  /**
   * Encode `values` into `out` (the whole space); bytes no field covers are zeroed, as device
   * types require of padding (e.g. §5.2.5.2 for blk).
   */
  encode(values: ConfigValues<F>, out: Uint8Array = new Uint8Array(this.size)): Uint8Array {
    if (out.length < this.size) throw new RangeError(`${this.device} configuration buffer of ${out.length} bytes is smaller than ${this.size}`);
    out.fill(0, 0, this.size);
    for (const f of this.fields) this.put(out, f, (values as Record<string, number | Uint8Array>)[f.name]);
    return out;
  }

  /** Decode the space from `bytes`, which must hold all of it. */
  decode(bytes: Uint8Array): ConfigValues<F> {
    if (bytes.length < this.size) {
      throw new RangeError(`${this.device} configuration space is ${bytes.length} bytes, expected ${this.size}`);
    }
    const out: Record<string, number | Uint8Array> = {};
    for (const f of this.fields) out[f.name] = this.get(bytes, f);
    return out as ConfigValues<F>;
  }

  /** Write one field into an encoded space (the device changing one value, e.g. net's status). */
  set<K extends keyof F & string>(bytes: Uint8Array, name: K, value: ConfigValues<F>[K]): void {
    this.put(bytes, this.field(name), value);
  }

  /** Read one field of an encoded space. */
  get<K extends keyof F & string>(bytes: Uint8Array, field: K | ConfigField): ConfigValues<F>[K] {
    const f = typeof field === 'string' ? this.field(field) : field;
    if (f.bytes) return bytes.slice(f.offset, f.offset + f.size) as ConfigValues<F>[K];
    let v = 0;
    for (let i = Math.min(f.size, 7) - 1; i >= 0; i--) v = v * 256 + bytes[f.offset + i];
    if (f.size === 8) v += bytes[f.offset + 7] * 2 ** 56;
    return v as ConfigValues<F>[K];
  }

  /** Whether the range [offset, offset+length) touches field `name` (the driver wrote it). */
  touches(name: keyof F & string, offset: number, length: number): boolean {
    const f = this.field(name);
    return offset < f.offset + f.size && f.offset < offset + length;
  }

  /** Names of the fields a range touches, for log lines: "writeback", or "bytes 61-63" past every field. */
  describeRange(offset: number, length: number): string {
    const names = this.fields.filter((f) => offset < f.offset + f.size && f.offset < offset + length).map((f) => f.name);
    return names.length > 0 ? names.join(', ') : `bytes ${offset}-${offset + length - 1}`;
  }

  /**
   * The decoded fields as "name: value" lines for `info`; a field whose feature was not
   * negotiated is shown as such instead of a value that means nothing (§2.5: such a field is
   * not valid to read without its feature).
   */
  describe(bytes: Uint8Array, features: bigint, featureNames?: Readonly<Record<number, string>>): string[] {
    return this.fields.map((f) => {
      if (f.feature !== undefined && (features & featureBit(f.feature)) === 0n) {
        return `${f.name}: (without ${describeFeatures(featureBit(f.feature), featureNames)})`;
      }
      const v = this.get(bytes, f);
      const shown = v instanceof Uint8Array ? Array.from(v, (b) => b.toString(16).padStart(2, '0')).join(':') : String(v);
      return `${f.name}: ${shown}${f.about === undefined ? '' : ` (${f.about})`}`;
    });
  }

  private field(name: string): ConfigField {
    const f = this.fields.find((x) => x.name === name);
    if (f === undefined) throw new RangeError(`${this.device} configuration has no field ${name}`);
    return f;
  }

  private put(out: Uint8Array, f: ConfigField, value: number | Uint8Array | undefined): void {
    if (f.bytes) {
      const bytes = value instanceof Uint8Array ? value : new Uint8Array(0);
      out.fill(0, f.offset, f.offset + f.size);
      out.set(bytes.subarray(0, f.size), f.offset);
      return;
    }
    let v = typeof value === 'number' && Number.isFinite(value) ? Math.max(0, Math.trunc(value)) : 0;
    if (f.size === 8) {
      const lo = v % U32;
      const hi = Math.floor(v / U32);
      for (let i = 0; i < 4; i++) out[f.offset + i] = (lo >>> (8 * i)) & 0xff;
      for (let i = 0; i < 4; i++) out[f.offset + 4 + i] = (hi >>> (8 * i)) & 0xff;
      return;
    }
    for (let i = 0; i < f.size; i++) {
      out[f.offset + i] = v & 0xff;
      v = Math.floor(v / 256);
    }
  }
}
