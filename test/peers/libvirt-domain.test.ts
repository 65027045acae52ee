/**
 * The domain docs/libvirt.md gives users is one libvirt 12.9 takes: it validates against
 * libvirt's schema, and a libvirtd driving the lab's QEMU defines it (the shared-memory rule and
 * the QEMU capabilities checked) and undefines it. test/guest/libvirt.test.ts boots the same
 * elements; this keeps the copy users read from drifting away from them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { libvirtUnavailable, startLibvirt } from '../lab/libvirt.ts';
import { PeerProcess } from '../lab/peer-process.ts';
import { labPaths } from '../lab/qemu.ts';
import { requireLab } from '../lab/require.ts';

const DOC = fileURLToPath(new URL('../../docs/libvirt.md', import.meta.url));

test("docs/libvirt.md's domain validates against libvirt's schema and is defined by libvirtd", async (t) => {
  if (!requireLab(t, libvirtUnavailable())) return;
  const blocks = [...readFileSync(DOC, 'utf8').matchAll(/```xml\n([^]*?)```/g)].map((m) => m[1]);
  assert.equal(blocks.length, 1, 'docs/libvirt.md has one domain');
  // The lab has no KVM that runs guest code: the same domain under TCG.
  const xml = blocks[0].replace("<domain type='kvm'", "<domain type='qemu'");
  assert.notEqual(xml, blocks[0], "the domain is type='kvm'");
  const name = /<name>([^<]+)<\/name>/.exec(xml)?.[1];
  assert.ok(name !== undefined, 'the domain has a name');

  const libvirt = await startLibvirt(t, 'libvirt-doc');
  const file = join(libvirt.dir, 'domain.xml');
  writeFileSync(file, xml);
  const validate = new PeerProcess('virt-xml-validate', ['chroot', labPaths().rootfs, '/usr/bin/virt-xml-validate', libvirt.qemuPath(file), 'domain'], { textStdout: true });
  assert.equal((await validate.exited).code, 0, validate.output);

  await libvirt.virsh('define', libvirt.qemuPath(file));
  const defined = await libvirt.virsh('dumpxml', name);
  assert.match(defined, /<disk type='vhostuser' device='disk'[ >]/);
  assert.match(defined, /<interface type='vhostuser'>/);
  assert.match(defined, /<access mode='shared'\/>/);
  assert.match(defined, /vfio-user-pci/);
  await libvirt.virsh('undefine', name);
  assert.equal((await libvirt.virsh('list', '--all', '--name')).trim(), '');
});
