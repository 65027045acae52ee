/**
 * libvirt runs a virtual machine on paravirt back-ends, as docs/libvirt.md tells users to: the
 * `paravirt serve` commands listen, `virsh define` takes a domain whose disk and network
 * interface are vhost-user (libvirt's own elements) and whose rng, console and second disk (a
 * whole vfio-user PCI device) come through <qemu:commandline>, `virsh start` boots the lab's
 * kernel, and a stock Linux guest uses every one of them: it reads what the host put on each
 * disk and writes what the host then finds in the image file, pings a host-side port of the
 * paravirt switch, reads /dev/hwrng, and reads a line from the host on hvc0 and answers it. The
 * disk's back-end restarts under the running domain and QEMU reconnects. `virsh destroy` and
 * `undefine` leave nothing running and nothing defined.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { NetDriver } from '../../src/devices/net/driver.ts';
import { formatMac } from '../../src/devices/net/wire.ts';
import { VhostUserFrontend } from '../../src/transports/vhost-user/frontend.ts';
import { DeviceId } from '../../src/virtio/constants.ts';
import { AgentClient, type RunResult } from '../lab/agent.ts';
import { acceptOne, KERNEL_ARGS, shareDir } from '../lab/guest.ts';
import { libvirtUnavailable, startLibvirt } from '../lab/libvirt.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { readManifest } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const PARAVIRT = fileURLToPath(new URL('../../bin/paravirt.js', import.meta.url));
const MiB = 1024 * 1024;
const DOMAIN = 'paravirt-libvirt';
const GUEST_MAC = '52:54:00:00:07:01';
const GUEST_IP = [10, 0, 7, 1];
const HOST_IP = [10, 0, 7, 2];
/** Ports of the console device: the console itself only (the front-end then needs 2*1+2 queues). */
const CONSOLE_MAX_PORTS = 1;
/** Booting under TCG on a machine other work shares. */
const BOOT_MS = 120_000;
const RUN_MS = 60_000;

/** `text` as an XML attribute value. */
const attr = (text: string): string =>
  text.replaceAll('&', '&amp;').replaceAll("'", '&apos;').replaceAll('"', '&quot;').replaceAll('<', '&lt;');

interface DomainPaths {
  readonly kernel: string;
  readonly initrd: string;
  readonly disk: string;
  readonly net: string;
  readonly rng: string;
  readonly console: string;
  readonly vfioDisk: string;
  readonly serialLog: string;
  readonly agent: string;
}

/**
 * The domain of docs/libvirt.md with the lab's kernel, paths as QEMU sees them. Guest RAM is a
 * shared memfd: vhost-user and vfio-user back-ends map it. The passed-through devices are JSON:
 * QEMU creates the devices given in its legacy syntax before the JSON ones libvirt gives
 * (qemu_create_cli_devices in system/vl.c), and the first would take the PCI slot libvirt gave
 * a root port. The console log (ttyS0) is a file, the test agent
 * (ttyS1) a Unix socket this process listens on.
 */
function domainXml(p: DomainPaths): string {
  const cmdline = [...KERNEL_ARGS, 'paravirt.agent=ttyS1'].join(' ');
  const arg = (value: string): string => `    <qemu:arg value='${attr(value)}'/>`;
  return `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${DOMAIN}</name>
  <memory unit='MiB'>512</memory>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>${attr(p.kernel)}</kernel>
    <initrd>${attr(p.initrd)}</initrd>
    <cmdline>${attr(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum' check='none'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='vhostuser' device='disk'>
      <driver name='qemu' type='raw'/>
      <source type='unix' path='${attr(p.disk)}'>
        <reconnect enabled='yes' timeout='1'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='vhostuser'>
      <mac address='${GUEST_MAC}'/>
      <source type='unix' path='${attr(p.net)}' mode='client'>
        <reconnect enabled='yes' timeout='10'/>
      </source>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='${attr(p.serialLog)}'/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='connect' path='${attr(p.agent)}'/>
      <target port='1'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
${arg('-chardev')}
${arg(`socket,id=paravirt-rng,path=${p.rng}`)}
${arg('-device')}
${arg(JSON.stringify({ driver: 'vhost-user-rng-pci', chardev: 'paravirt-rng' }))}
${arg('-chardev')}
${arg(`socket,id=paravirt-console,path=${p.console}`)}
${arg('-device')}
${arg(JSON.stringify({ driver: 'vhost-user-test-device-pci', chardev: 'paravirt-console', 'virtio-id': 3, num_vqs: 2 * CONSOLE_MAX_PORTS + 2, config_size: 12 }))}
${arg('-device')}
${arg(JSON.stringify({ driver: 'vfio-user-pci', socket: { type: 'unix', path: p.vfioDisk } }))}
  </qemu:commandline>
</domain>
`;
}

/** `paravirt serve TYPE ARGS…` as a user runs it, resolved once every socket listens; stopped when the test ends. */
async function serve(t: TestContext, type: string, args: string[], sockets: number): Promise<PeerProcess> {
  const backend = new PeerProcess(`paravirt serve ${type}`, [process.execPath, PARAVIRT, 'serve', type, ...args], { textStdout: true });
  t.after(() => backend.stop());
  // The command logs JSON lines on stdout, one "listening" line per socket.
  await backend.waitForOutput(new RegExp(`((vhost-user back-end|vfio-user server) listening[^]*){${sockets}}`), 0, `listening on ${sockets} socket(s)`);
  return backend;
}

/** Rejects after `ms` unless `promise` settles first; `why` explains the failure. */
async function within<T>(promise: Promise<T>, ms: number, why: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(why())), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

const ipEquals = (frame: Uint8Array, at: number, ip: number[]): boolean => ip.every((b, i) => frame[at + i] === b);

/**
 * The host-side port's IP stack, as small as a ping needs: answers ARP requests for HOST_IP (RFC
 * 826) and ICMP echo requests to it (RFC 792), and counts the echo requests and their senders.
 */
async function answerPings(driver: NetDriver, seen: { echoes: number; senders: Set<string> }): Promise<void> {
  // The driver's own address: its device filters out unicast frames to any other (§5.1.6.5.1).
  const mac = driver.mac;
  for (;;) {
    const received = await driver.next();
    if (received === undefined) return;
    const f = received.frame;
    const etherType = (f[12] << 8) | f[13];
    if (etherType === 0x0806 && f[21] === 1 && ipEquals(f, 38, HOST_IP)) {
      const reply = new Uint8Array(42);
      reply.set(f.subarray(6, 12), 0);
      reply.set(mac, 6);
      reply.set([0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02], 12);
      reply.set(mac, 22);
      reply.set(HOST_IP, 28);
      reply.set(f.subarray(22, 32), 32);
      await driver.send(reply);
    } else if (etherType === 0x0800 && f[23] === 1 && ipEquals(f, 30, HOST_IP)) {
      const icmp = 14 + (f[14] & 0x0f) * 4;
      if (f[icmp] !== 8) continue;
      seen.echoes++;
      seen.senders.add(formatMac(f.subarray(6, 12)));
      const totalLength = (f[16] << 8) | f[17];
      const reply = Uint8Array.from(f.subarray(0, 14 + totalLength));
      reply.set(f.subarray(6, 12), 0);
      reply.set(mac, 6);
      // Swapping the addresses leaves the IP header checksum as it was (a sum does not depend on order).
      reply.set(f.subarray(30, 34), 26);
      reply.set(f.subarray(26, 30), 30);
      // Type 8 becomes 0: the ones' complement checksum grows by 0x0800 (RFC 1624), with the carry folded in.
      reply[icmp] = 0;
      let sum = ((reply[icmp + 2] << 8) | reply[icmp + 3]) + 0x0800;
      sum = (sum & 0xffff) + (sum >> 16);
      reply[icmp + 2] = sum >> 8;
      reply[icmp + 3] = sum & 0xff;
      await driver.send(reply);
    }
  }
}

const sha256 = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');

test('libvirt: `virsh define` and `start` a domain on paravirt back-ends (vhost-user disk and interface; rng, console and a vfio-user disk through qemu:commandline); the guest uses each; `destroy` and `undefine` clean up', { timeout: 300_000 }, async (t) => {
  if (!requireLab(t, libvirtUnavailable())) return;
  const manifest = readManifest();
  const share = shareDir(t, 'libvirt-vm');
  const file = (name: string): string => join(share.dir, name);
  const log = pino({ level: process.env.PARAVIRT_LOG ?? 'warn' });

  // Two sparse disks, 64 MiB behind vhost-user and 32 MiB behind vfio-user (the guest tells them
  // apart by size), each with a first MiB the host fills before the guest starts.
  const disks = [
    { name: 'vhost-user', image: file('disk.img'), sectors: (64 * MiB) / 512, hostPattern: randomBytes(MiB) },
    { name: 'vfio-user', image: file('vfio-disk.img'), sectors: (32 * MiB) / 512, hostPattern: randomBytes(MiB) },
  ];
  for (const disk of disks) {
    writeFileSync(disk.image, disk.hostPattern);
    truncateSync(disk.image, disk.sectors * 512);
  }

  const backends = await Promise.all([
    serve(t, 'blk', ['--socket-path', file('blk.sock'), '--image', disks[0].image], 1),
    serve(t, 'blk', ['--transport', 'vfio-user', '--socket-path', file('vfio-blk.sock'), '--image', disks[1].image], 1),
    serve(t, 'net', ['--switch', 'lan0', '--socket-path', file('vm.sock'), '--socket-path', file('host.sock')], 2),
    serve(t, 'rng', ['--socket-path', file('rng.sock')], 1),
    serve(t, 'console', ['--socket-path', file('console.sock'), '--console', `unix:${file('hvc0.sock')}`, '--max-ports', String(CONSOLE_MAX_PORTS)], 1),
  ]);

  // The host's own port on the switch: paravirt's net driver on the second socket.
  const hostPort = await NetDriver.open(await VhostUserFrontend.connect(file('host.sock'), { deviceId: DeviceId.NET, log }), { log });
  t.after(() => hostPort.close());
  const pings = { echoes: 0, senders: new Set<string>() };
  const answering = answerPings(hostPort, pings);

  const agentListener = acceptOne(file('agent.sock'));
  t.after(() => agentListener.server.close());
  const libvirt = await startLibvirt(t, 'libvirt');
  const xml = domainXml({
    kernel: share.qemuPath(manifest.kernel.vmlinux),
    initrd: share.qemuPath(manifest.initramfs),
    disk: share.qemuPath(file('blk.sock')),
    net: share.qemuPath(file('vm.sock')),
    rng: share.qemuPath(file('rng.sock')),
    console: share.qemuPath(file('console.sock')),
    vfioDisk: share.qemuPath(file('vfio-blk.sock')),
    serialLog: share.qemuPath(file('console.log')),
    agent: share.qemuPath(file('agent.sock')),
  });
  writeFileSync(file('domain.xml'), xml);
  await libvirt.virsh('define', share.qemuPath(file('domain.xml')));
  await libvirt.virsh('start', DOMAIN);
  assert.equal((await libvirt.virsh('domstate', DOMAIN)).trim(), 'running');
  const version = await libvirt.virsh('version');
  assert.match(version, new RegExp(`Running hypervisor: QEMU ${manifest.qemu.version.replaceAll('.', '\\.')}\\b`), "libvirt drives the lab's QEMU");

  const consoleTail = (): string => {
    const text = existsSync(file('console.log')) ? readFileSync(file('console.log'), 'utf8') : '';
    return `--- console ---\n${text.trimEnd().split('\n').slice(-30).join('\n')}\n--- qemu (libvirt's log) ---\n${libvirt.qemuLog(DOMAIN).trimEnd().split('\n').slice(-15).join('\n')}`;
  };
  const agent = new AgentClient(await within(agentListener.connection, BOOT_MS, () => `QEMU did not connect the agent's serial port\n${consoleTail()}`));
  await within(agent.ready, BOOT_MS, () => `the guest agent was not ready within ${BOOT_MS} ms\n${consoleTail()}`);
  const check = async (script: string): Promise<string> => {
    let r: RunResult;
    try {
      r = await agent.run(script, RUN_MS);
    } catch (err) {
      throw new Error(`\`${script}\`: ${(err as Error).message}\n${consoleTail()}`, { cause: err });
    }
    assert.equal(r.code, 0, `\`${script}\` exited with ${r.code}: ${r.stdout}${r.stderr}\n${consoleTail()}`);
    return r.stdout;
  };

  // The disks: what the host wrote is what the guest reads, and what the guest writes lands in the image file.
  const guestWrote: string[] = [];
  const guestDevices: string[] = [];
  for (const disk of disks) {
    const dev = (await check(`for d in /sys/block/vd*; do if [ "$(cat $d/size)" = ${disk.sectors} ]; then echo /dev/\${d##*/}; fi; done`)).trim();
    assert.match(dev, /^\/dev\/vd[a-z]$/, `the ${disk.name} disk, by its size`);
    assert.equal((await check(`dd if=${dev} bs=1M count=1 iflag=direct 2>/dev/null | sha256sum`)).split(' ')[0], sha256(disk.hostPattern), `the ${disk.name} disk reads what the host wrote`);
    const written = (await check(`dd if=/dev/urandom of=/tmp/p bs=1M count=1 2>/dev/null && dd if=/tmp/p of=${dev} bs=1M seek=8 oflag=direct 2>/dev/null && sha256sum < /tmp/p`)).split(' ')[0];
    assert.equal(sha256(readFileSync(disk.image).subarray(8 * MiB, 9 * MiB)), written, `the ${disk.name} image file holds what the guest wrote`);
    guestWrote.push(written);
    guestDevices.push(dev);
  }

  // <reconnect> (every second here): the vhost-user disk's back-end stops and starts again on its
  // socket; QEMU reconnects, and the guest's next read is served by the new process.
  const [vhostDisk] = disks;
  assert.equal((await backends[0].stop()).code, 0, 'the disk back-end exits cleanly on SIGTERM');
  backends[0] = await serve(t, 'blk', ['--socket-path', file('blk.sock'), '--image', vhostDisk.image], 1);
  assert.equal((await check(`dd if=${guestDevices[0]} bs=1M skip=8 count=1 iflag=direct 2>/dev/null | sha256sum`)).split(' ')[0], guestWrote[0], 'the guest reads its data through the restarted back-end');

  // The network interface: libvirt's MAC, and pings answered by the host-side port of the switch.
  const ifname = (await check('basename /sys/bus/virtio/drivers/virtio_net/virtio*/net/*')).trim();
  assert.equal((await check(`cat /sys/class/net/${ifname}/address`)).trim(), GUEST_MAC);
  await check(`ip addr add ${GUEST_IP.join('.')}/24 dev ${ifname} && ip link set ${ifname} up`);
  const ping = await check(`ping -c 3 -W 10 ${HOST_IP.join('.')}`);
  assert.match(ping, /3 packets transmitted, 3 packets received/);
  assert.equal(pings.echoes, 3, 'the host-side port answered three echo requests');
  assert.deepEqual([...pings.senders], [GUEST_MAC], 'from the guest');

  // The rng through <qemu:commandline>.
  assert.match(await check('cat /sys/class/misc/hw_random/rng_current'), /virtio_rng/);
  const random = (await check('dd if=/dev/hwrng bs=64 count=1 2>/dev/null | od -An -v -tx1')).replace(/\s+/g, '');
  assert.equal(random.length, 128, 'the guest read 64 bytes from /dev/hwrng');

  // The console through <qemu:commandline>, both ways through port 0. The line goes first: the
  // socket holds it until the back-end has attached this client, so the guest's answer cannot
  // come while no one listens (the back-end discards console output then).
  const hvc0 = connect(file('hvc0.sock'));
  await once(hvc0, 'connect');
  t.after(() => hvc0.destroy());
  let fromGuest = '';
  const answered = new Promise<void>((resolve) => {
    hvc0.on('data', (chunk: Buffer) => {
      fromGuest += chunk.toString('latin1');
      if (fromGuest.includes('guest read: hello from the host')) resolve();
    });
  });
  hvc0.write('hello from the host\n');
  await check('read -r line < /dev/hvc0 && echo "guest read: $line" > /dev/hvc0');
  await within(answered, RUN_MS, () => `hvc0 carried ${JSON.stringify(fromGuest)}`);

  // Gone: QEMU stopped, the domain undefined, the back-ends still serving and free for the next VM.
  await libvirt.virsh('destroy', DOMAIN);
  assert.equal((await libvirt.virsh('domstate', DOMAIN)).trim(), 'shut off');
  await libvirt.virsh('undefine', DOMAIN);
  assert.equal((await libvirt.virsh('list', '--all', '--name')).trim(), '', 'no domain left');
  await hostPort.close();
  await answering;
  for (const backend of backends) {
    assert.ok(backend.running, `${backend.name} outlived the virtual machine`);
    assert.equal((await backend.stop()).code, 0, `${backend.name} exits cleanly on SIGTERM`);
  }
});
