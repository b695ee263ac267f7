// Runs a command to its exit, collecting its output (tests of the command line and of worker processes).
import { spawn } from 'node:child_process';
import { once } from 'node:events';

export interface ProcessResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export async function runProcess(argv: string[], env: NodeJS.ProcessEnv): Promise<ProcessResult> {
  const child = spawn(argv[0]!, argv.slice(1), { env });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += String(d)));
  child.stderr.on('data', (d) => (stderr += String(d)));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stdout, stderr };
}
