/**
 * The devices' counters in the Prometheus text exposition format (version 0.0.4, "Exposition
 * formats" in the Prometheus documentation): one family per queue counter, labelled by device
 * and queue, two gauges of how full each queue is, and one family per device-specific count. The
 * format is a few lines of text per sample, so it is written here rather than through a client
 * library, which would add a registry and collectors to re-describe counters the devices already
 * keep.
 */
import type { CountersSnapshot, QueueCounters, QueueFill } from '../virtio/counters.ts';

/** What the exposition needs of one device: who it is and its counters now. */
export interface MeteredDevice {
  readonly id: string;
  readonly type: string;
  readonly counters: CountersSnapshot;
}

/** Content-Type of the text format. */
export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

const QUEUE_FAMILIES: readonly { readonly field: keyof QueueCounters; readonly name: string; readonly help: string }[] = [
  { field: 'requests', name: 'paravirt_queue_requests_total', help: 'Chains the device returned to the driver (used buffers).' },
  { field: 'readBytes', name: 'paravirt_queue_read_bytes_total', help: 'Device-readable bytes of the returned chains: what the driver sent.' },
  { field: 'writtenBytes', name: 'paravirt_queue_written_bytes_total', help: 'Bytes the device wrote into the returned chains.' },
  { field: 'errors', name: 'paravirt_queue_errors_total', help: 'Requests answered with an error status, or whose handler failed.' },
  { field: 'ringFaults', name: 'paravirt_queue_ring_faults_total', help: 'Ring rules the driver broke on the queue.' },
  { field: 'notifications', name: 'paravirt_queue_notifications_total', help: 'Used-buffer notifications sent to the driver.' },
  { field: 'suppressed', name: 'paravirt_queue_suppressed_total', help: 'Publishes after which the driver had asked not to be notified.' },
];

const FILL_GAUGES: readonly { readonly field: keyof QueueFill; readonly name: string; readonly help: string }[] = [
  { field: 'inFlight', name: 'paravirt_queue_in_flight', help: 'Chains the device took from the queue and has not returned yet.' },
  { field: 'size', name: 'paravirt_queue_size', help: 'Entries in the queue as the driver set it up; 0 while the queue does not run.' },
];

/** A label value with backslash, double quote and line feed escaped, as the format requires. */
function labelValue(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function labels(pairs: Readonly<Record<string, string>>): string {
  return `{${Object.entries(pairs).map(([k, v]) => `${k}="${labelValue(v)}"`).join(',')}}`;
}

/** "droppedNoBuffer" → "dropped_no_buffer": a device count's name as a metric name part. */
export function snakeCase(name: string): string {
  return name
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/[^A-Za-z0-9_]/g, '_')
    .toLowerCase();
}

/** One family with a sample per device and queue, `values` giving a device's per queue. */
function queueFamily(
  out: string[],
  devices: readonly MeteredDevice[],
  family: { readonly name: string; readonly help: string },
  type: 'counter' | 'gauge',
  values: (counters: CountersSnapshot) => readonly number[],
): void {
  out.push(`# HELP ${family.name} ${family.help}`, `# TYPE ${family.name} ${type}`);
  for (const d of devices) {
    values(d.counters).forEach((value, queue) => {
      out.push(`${family.name}${labels({ device: d.id, type: d.type, queue: String(queue) })} ${value}`);
    });
  }
}

/** The exposition of every device's counters. */
export function prometheusText(devices: readonly MeteredDevice[]): string {
  const out: string[] = [];
  for (const family of QUEUE_FAMILIES) queueFamily(out, devices, family, 'counter', (c) => c.queues.map((q) => q[family.field]));
  for (const gauge of FILL_GAUGES) queueFamily(out, devices, gauge, 'gauge', (c) => c.fill.map((f) => f[gauge.field]));
  // Device-specific counts: the device types name them; whether each only grows (a drop count)
  // or goes up and down (pages in the balloon) is theirs to know, so they are untyped.
  const families = new Map<string, string[]>();
  for (const d of devices) {
    for (const [name, value] of Object.entries(d.counters.device)) {
      if (!Number.isFinite(value)) continue;
      const metric = `paravirt_${snakeCase(d.type)}_${snakeCase(name)}`;
      let samples = families.get(metric);
      if (samples === undefined) families.set(metric, (samples = []));
      samples.push(`${metric}${labels({ device: d.id })} ${value}`);
    }
  }
  for (const [metric, samples] of families) out.push(`# TYPE ${metric} untyped`, ...samples);
  return `${out.join('\n')}\n`;
}
