/** The RTC device's registry entry (VIRTIO 1.4, "RTC Device"): requestq, alarmq, no configuration space. */
import { DeviceId, FRONT_END_MAX_QUEUE_SIZE } from '../../virtio/constants.ts';
import type { DeviceType } from '../device-type.ts';
import { OptionError, read } from '../host-options.ts';
import { CLOCK_NAMES, type ClockName, isClockName } from './clock-names.ts';

/** "utc,tai" → ['utc', 'tai']: known names, each once. */
function clockList(value: string): ClockName[] {
  const names = value.split(',').map((s) => s.trim());
  for (const n of names) {
    if (!isClockName(n)) throw new OptionError(`--clocks takes a comma-separated list of ${CLOCK_NAMES.join(', ')}, not "${n}".`);
  }
  if (new Set(names).size !== names.length) throw new OptionError(`--clocks names a clock twice in "${value}".`);
  return names as ClockName[];
}

/** Seconds with up to 9 decimals, maybe negative, as nanoseconds. */
function seconds(value: string): bigint {
  const m = /^(-?)(\d+)(?:\.(\d{1,9}))?$/.exec(value);
  if (!m) throw new OptionError(`--offset must be seconds such as 3600 or -0.25, not "${value}".`);
  const ns = BigInt(m[2]) * 1_000_000_000n + BigInt((m[3] ?? '').padEnd(9, '0'));
  return m[1] === '-' ? -ns : ns;
}

function ppm(value: string): number {
  const n = /^-?\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(n) || n <= -1_000_000 || n > 1_000_000) {
    throw new OptionError(`--rate-ppm must be an integer above -1000000 and at most 1000000, not "${value}".`);
  }
  return n;
}

export const rtcType: DeviceType = {
  name: 'rtc',
  title: 'virtio-rtc clocks (VIRTIO 1.4 RTC device)',
  deviceId: DeviceId.RTC,
  featureNames: { 0: 'ALARM' },
  queues: [
    { name: 'requestq', count: '1', maxSize: FRONT_END_MAX_QUEUE_SIZE },
    { name: 'alarmq', count: '1, used with --alarm', maxSize: FRONT_END_MAX_QUEUE_SIZE },
  ],
  vhostUser: { type: 'rtc' },
  host: {
    summary: "the host's UTC, TAI and monotonic clocks, with alarms, as a virtio-rtc device",
    help: [
      '',
      'QEMU:  -chardev socket,id=rtc,path=S -device vhost-user-rtc-pci,chardev=rtc',
      'Linux exposes each clock as /dev/ptpN and the utc-smeared clock as /dev/rtcN (with its alarm).',
    ].join('\n'),
    options: [
      {
        flags: '--clocks <list>',
        description: `clocks served, in clock-id order: ${CLOCK_NAMES.join(', ')}`,
        parse: clockList,
        defaultValue: [...CLOCK_NAMES],
      },
      { flags: '--alarm', description: 'offer VIRTIO_RTC_F_ALARM: an alarm on every clock, notified on the alarmq' },
      { flags: '--offset <seconds>', description: 'serve every clock this far ahead (negative: behind), for testing guests', parse: seconds },
      { flags: '--rate-ppm <ppm>', description: 'serve every clock running this many parts per million fast (negative: slow)', parse: ppm },
      { flags: '--leap-seconds <path>', description: 'the IERS leap-second list (default /usr/share/zoneinfo/leap-seconds.list)' },
    ],
    async create(values, env) {
      const { makeClocks } = await import('./clocks.ts');
      const { LEAP_SECONDS_LIST, readLeapSeconds } = await import('./leap-seconds.ts');
      const { RtcDevice } = await import('./device.ts');
      const names = read.list(values, 'clocks', isClockName);
      const path = read.string(values, 'leapSeconds') ?? LEAP_SECONDS_LIST;
      let leapSeconds;
      try {
        leapSeconds = readLeapSeconds(path);
      } catch (err) {
        // Only tai (on a host without a kernel TAI offset) and utc-smeared need it; they say so.
        if (read.string(values, 'leapSeconds') !== undefined) throw new Error(`--leap-seconds ${path}: ${(err as Error).message}`, { cause: err });
      }
      // Past its expiry the list cannot say whether a leap second was announced since.
      if (leapSeconds !== undefined && BigInt(Math.floor(Date.now() / 1000)) > leapSeconds.expires) {
        env.log.warn({ path }, `${path} expired; a leap second announced since would be missed by the tai and utc-smeared clocks (update tzdata)`);
      }
      const clocks = makeClocks(names, {
        leapSeconds,
        offsetNs: read.value(values, 'offset', (v): v is bigint => typeof v === 'bigint'),
        ratePpm: read.number(values, 'ratePpm'),
      });
      const device = new RtcDevice({ clocks, alarm: read.flag(values, 'alarm') });
      return { devices: [device], close: async () => device.close() };
    },
  },
  qemu: {
    async options() {
      return {};
    },
    vhostUser: ({ id, chardev }) => ['-device', `vhost-user-rtc-pci,id=${id},chardev=${chardev}`],
  },
  async fuzz() {
    return (await import('./fuzz-profile.ts')).RTC_FUZZ;
  },
  async driverFuzz() {
    return (await import('./driver-fuzz-profile.ts')).RTC_DRIVER_FUZZ;
  },
  guest: {
    async open(transport, log) {
      const { RtcDriver } = await import('./driver.ts');
      return RtcDriver.open(transport, { log });
    },
  },
};
