// The Lua scripts under ./lua, one file each with a KEYS/ARGV header, run by EVALSHA with an EVAL
// fallback on NOSCRIPT (a restarted or failed-over Redis has an empty script cache). A line
// `-- @include "name"` is replaced by ./lua/includes/name.lua, as BullMQ's scripts share helpers.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { checkWaitReply, NotDurableError, type Durability } from './durable-ack.ts';
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

/**
 * runScript with the script and `WAIT d.replicas` in one pipeline (one connection, the master of the
 * keys' slot), so an acknowledged write is on that many replicas (durable-ack.ts). A pipeline that
 * fails as a whole (the master went away) leaves the write's fate unknown: NotDurableError.
 */
export async function runScriptDurable(redis: RedisClient, script: LuaScript, keys: string[], args: ScriptArg[], d: Durability): Promise<unknown> {
  if (d.replicas <= 0) return runScript(redis, script, keys, args);
  const attempt = async (cmd: 'evalsha' | 'eval') => {
    const p = redis.pipeline();
    p.callBuffer(cmd, [cmd === 'evalsha' ? script.sha : script.lua, keys.length, ...keys, ...args]);
    p.wait(d.replicas, d.timeoutMs);
    try {
      return (await p.exec()) ?? [];
    } catch {
      throw new NotDurableError(0, d.replicas, 'the connection to the master was lost before the write was confirmed');
    }
  };
  let replies = await attempt('evalsha');
  const first = replies[0]?.[0];
  if (first instanceof Error && first.message.startsWith('NOSCRIPT')) replies = await attempt('eval');
  const [err, value] = replies[0] ?? [new NotDurableError(0, d.replicas, 'no reply to the write'), undefined];
  if (err) throw err; // the script's own error: nothing was written that needs confirming
  checkWaitReply(replies[1] as [Error | null, unknown] | undefined, d);
  return value;
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
