// Optional bearer API keys. Configured as plain keys or as sha256 hex hashes; a session belongs to
// the key that created it (stored as the key's hash), and any other key sees 404 for it.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ApiError } from './errors.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** sha256 hex of the caller's API key; '' when keys are not configured. */
    owner: string;
  }
}

/** Paths answered without an API key (probes and metrics); openapi.ts marks them `security: []`. */
export const OPEN_PATHS: readonly string[] = ['/healthz', '/readyz', '/metrics'];

export function keyHash(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}

/** `keys`: plain keys; `hashes`: sha256 hex of keys. Both empty = no authentication. */
export function registerAuth(app: FastifyInstance, keys: readonly string[], hashes: readonly string[]): void {
  const allowed = [...keys.map(keyHash), ...hashes.map((h) => h.toLowerCase())].map((h) => Buffer.from(h, 'hex'));
  app.decorateRequest('owner', '');
  app.addHook('onRequest', async (req: FastifyRequest) => {
    if (allowed.length === 0) return;
    const url = req.url.split('?')[0]!;
    if (OPEN_PATHS.includes(url)) return;
    const header = req.headers.authorization ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(header);
    if (!m) throw new ApiError('unauthorized', 'missing API key: send "Authorization: Bearer <key>"', null, 'missing_api_key');
    const h = Buffer.from(keyHash(m[1]!.trim()), 'hex');
    if (!allowed.some((a) => a.length === h.length && timingSafeEqual(a, h))) {
      throw new ApiError('unauthorized', 'invalid API key', null, 'invalid_api_key');
    }
    req.owner = h.toString('hex');
  });
}
