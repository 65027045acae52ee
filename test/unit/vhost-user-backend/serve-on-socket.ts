import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { Logger } from 'pino';
import { BackendServer } from '../../../src/transports/vhost-user/backend-server.ts';
import type { VirtioDevice } from '../../../src/virtio/device.ts';

/** `device` served by a vhost-user back-end on a socket in a directory of its own; both go when the test ends. */
export function serveOnSocket(t: TestContext, device: VirtioDevice, log: Logger): { path: string; server: BackendServer } {
  const dir = mkdtempSync(join(tmpdir(), 'paravirt-vhost-user-'));
  const path = join(dir, 'vhost.sock');
  const server = BackendServer.listen(device, { socketPath: path }, log);
  t.after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, server };
}
