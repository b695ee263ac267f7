// The Lua scripts under ./lua, one file each with a KEYS/ARGV header, run by EVALSHA with an EVAL
// fallback on NOSCRIPT (a restarted or failed-over Redis has an empty script cache). A line
// `-- @include "name"` is replaced by ./lua/includes/name.lua, as BullMQ's scripts share helpers.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { RedisClient } from './redis-connection.ts';

export interface LuaScript {
  name: string;
  lua: string;
  sha: string;
}

const INCLUDE = /^-- @include "([a-z-]+)"$/gm;

export function loadScript(name: string): LuaScript {
  const read = (file: string) => readFileSync(new URL(`./lua/${file}.lua`, import.meta.url), 'utf8');
  const lua = read(name).replace(INCLUDE, (_line, inc: string) => read(`includes/${inc}`));
  return { name, lua, sha: createHash('sha1').update(lua).digest('hex') };
}

export type ScriptArg = string | Buffer | number;

export async function runScript(redis: RedisClient, script: LuaScript, keys: string[], args: ScriptArg[]): Promise<unknown> {
  // callBuffer so binary fields come back as Buffers, not lossy UTF-8 strings.
  try {
    return await redis.callBuffer('evalsha', [script.sha, keys.length, ...keys, ...args]);
  } catch (err) {
    if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
    return await redis.callBuffer('eval', [script.lua, keys.length, ...keys, ...args]);
  }
}

/** Splits a script's error reply "CODE rest" (see the lua headers); null for other errors. */
export function scriptError(err: unknown): { code: string; rest: string } | null {
  if (!(err instanceof Error)) return null;
  const m = /^(EXISTS|NOTFOUND|LAYOUT|CONFLICT|STATE|LEASE|FAILED|CLIENTSEQ|NOTFAILED)\b ?(.*)$/s.exec(err.message);
  return m ? { code: m[1]!, rest: m[2] ?? '' } : null;
}

/** A script's reply as text (replies come back as Buffers: runScript uses callBuffer). */
export function text(v: unknown): string {
  return Buffer.isBuffer(v) ? v.toString('utf8') : String(v);
}
