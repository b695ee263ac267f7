// Log output for the CLI and the API: pino JSON lines where a program reads them (a pipe, a file, a
// container's log collector), pino-pretty's coloured lines where a person watches a terminal.
import pino, { type DestinationStream, type Level } from 'pino';
import pretty from 'pino-pretty';

/** The CLI's log call (also handed to the worker runtime): fields first, then the message, as pino's. */
export type Log = (obj: Record<string, unknown>, msg: string) => void;

/**
 * Where pino writes for file descriptor `fd` (1: stdout, 2: stderr): pretty when it is a terminal.
 * Synchronous both ways, so the last lines before process.exit() are not lost.
 */
export function logDestination(fd: 1 | 2, isTTY = (fd === 1 ? process.stdout : process.stderr).isTTY === true): DestinationStream {
  if (!isTTY) return pino.destination({ fd, sync: true });
  return pretty({ destination: fd, sync: true, colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' });
}

/**
 * The CLI's own lines go to stderr (stdout carries results: ingest's JSON, generated text). JSON keeps
 * the shape tests and log collectors read: an ISO `time`, `msg`, the fields, and pino's `level`.
 */
export function cliLogger(level: Level | 'silent' = 'info', dest: DestinationStream = logDestination(2)): Log {
  const logger = pino({ level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, dest);
  return (obj, msg) => logger.info(obj, msg);
}
