/**
 * `paravirt devices [--json]`: every registered device type, with the transports that serve it,
 * its queues, its device-specific features and its configuration fields — all read from the
 * registry, so the list cannot drift from what `serve` offers.
 */
import type { Command } from 'commander';
import type { DeviceType, PciDeviceType } from '../devices/device-type.ts';
import { DEVICE_TYPES, PCI_DEVICE_TYPES } from '../devices/registry.ts';

/**
 * How a host half reaches a driver: `paravirt serve <type>` over vhost-user, and in-process over
 * virtio-mmio (createLoopback, for embedding and tests). The same for every type, since a
 * transport holds no device logic.
 */
const TRANSPORTS = ['vhost-user', 'vfio-user', 'mmio'] as const;

function describe(type: DeviceType): Record<string, unknown> {
  return {
    name: type.name,
    title: type.title,
    deviceId: type.deviceId,
    transports: TRANSPORTS,
    vhostUser: type.vhostUser,
    queues: type.queues,
    features: Object.entries(type.featureNames).map(([bit, name]) => ({ bit: Number(bit), name })),
    config: type.config?.fields.map((f) => ({ name: f.name, offset: f.offset, size: f.size })) ?? [],
  };
}

function text(type: DeviceType): string {
  const features = Object.values(type.featureNames);
  const lines = [
    `${type.name} — ${type.title}, device ID ${type.deviceId}`,
    `  transports: ${TRANSPORTS.join(', ')} (vhost-user type "${type.vhostUser.type}")`,
    `  queues:     ${type.queues.map((q) => `${q.name} (${q.count}, up to ${q.maxSize})`).join('; ')}`,
    `  features:   ${features.length === 0 ? 'none device-specific' : features.join(', ')}`,
    `  config:     ${type.config === undefined ? 'none' : `${type.config.size} bytes: ${type.config.fields.map((f) => f.name).join(', ')}`}`,
  ];
  return lines.join('\n');
}

/** A PCI device that is not virtio: its PCI identity, and vfio-user as its only transport. */
function describePci(type: PciDeviceType): Record<string, unknown> {
  return { name: type.name, title: type.title, pci: type.pci, transports: ['vfio-user'] };
}

function hex(n: number, digits: number): string {
  return `0x${n.toString(16).padStart(digits, '0')}`;
}

function textPci(type: PciDeviceType): string {
  return [
    `${type.name} — ${type.title}, PCI ${hex(type.pci.vendorId, 4)}:${hex(type.pci.deviceId, 4)} class ${hex(type.pci.classCode, 6)}`,
    '  transports: vfio-user (a PCI device, not virtio)',
  ].join('\n');
}

export function addDevicesCommand(program: Command): void {
  program
    .command('devices')
    .description('list the device types paravirt serves, with their transports, queues, features and configuration')
    .option('--json', 'print one JSON object per line instead of text')
    .action((options: { json?: boolean }) => {
      const out =
        options.json === true
          ? [...DEVICE_TYPES.map((t) => JSON.stringify(describe(t))), ...PCI_DEVICE_TYPES.map((t) => JSON.stringify(describePci(t)))]
          : [...DEVICE_TYPES.map(text), ...PCI_DEVICE_TYPES.map(textPci)];
      process.stdout.write(`${out.join(options.json === true ? '\n' : '\n\n')}\n`);
    });
}
