// Chat templates: a package may declare a Hugging Face `chat_template` (a Jinja string) in its
// tokenizer_config.json; POST /v1/chat/completions renders a conversation with it into the prompt text.
// Rendered with @huggingface/jinja (what transformers.js uses) and the variables transformers passes:
// messages, add_generation_prompt, bos_token, eos_token (and its raise_exception).
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Template } from '@huggingface/jinja';

export interface ChatTemplateInfo {
  /** The Jinja source; absent: the package has none (chat requests are refused). */
  chatTemplate?: string;
  bosToken?: string;
  eosToken?: string;
}

/** A special token in tokenizer_config.json: a string or an AddedToken object ({content, ...}). */
function tokenString(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

/**
 * The chat template of a parsed tokenizer_config.json: `chat_template` as a string, or as a list of
 * named templates ({name, template}, as transformers saves several), of which the one named "default".
 */
export function chatTemplateOf(config: Record<string, unknown>, file = 'tokenizer_config.json'): ChatTemplateInfo {
  const raw = config.chat_template;
  let chatTemplate: string | undefined;
  if (typeof raw === 'string') chatTemplate = raw;
  else if (Array.isArray(raw)) {
    const named = raw.find((t) => t && typeof t === 'object' && (t as { name?: unknown }).name === 'default') as { template?: unknown } | undefined;
    if (!named || typeof named.template !== 'string') throw new Error(`${file}: 'chat_template' is a list without a template named "default"`);
    chatTemplate = named.template;
  } else if (raw !== undefined && raw !== null) {
    throw new Error(`${file}: 'chat_template' must be a string (a Jinja template) or a list of {name, template}`);
  }
  const bosToken = tokenString(config.bos_token);
  const eosToken = tokenString(config.eos_token);
  return { ...(chatTemplate !== undefined ? { chatTemplate } : {}), ...(bosToken !== undefined ? { bosToken } : {}), ...(eosToken !== undefined ? { eosToken } : {}) };
}

/** The chat template beside a tokenizer file (its folder's tokenizer_config.json, optional). */
export async function readChatTemplate(tokenizerFile: string): Promise<ChatTemplateInfo> {
  const file = path.join(path.dirname(tokenizerFile), 'tokenizer_config.json');
  if (!existsSync(file)) return {};
  let config: unknown;
  try {
    config = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: invalid JSON: ${(err as Error).message}`);
  }
  if (!config || typeof config !== 'object' || Array.isArray(config)) throw new Error(`${file}: must be a JSON object`);
  return chatTemplateOf(config as Record<string, unknown>, file);
}

/** A message as templates see it: content is always a string (text parts joined). */
export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

/** The template failed to parse or to render: the message is Jinja's. */
export class ChatTemplateError extends Error {}

// Parsed templates by source (a few per process: one per package, plus any a test swaps in).
const compiled = new Map<string, Template>();
const MAX_COMPILED = 32;

function compile(source: string): Template {
  let t = compiled.get(source);
  if (!t) {
    try {
      t = new Template(source);
    } catch (err) {
      throw new ChatTemplateError((err as Error).message);
    }
    if (compiled.size >= MAX_COMPILED) compiled.clear();
    compiled.set(source, t);
  }
  return t;
}

export function renderChatTemplate(
  source: string,
  messages: readonly ChatMessage[],
  opts: { bosToken?: string; eosToken?: string; addGenerationPrompt?: boolean } = {},
): string {
  const template = compile(source);
  try {
    return template.render({
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
      bos_token: opts.bosToken ?? '',
      eos_token: opts.eosToken ?? '',
    });
  } catch (err) {
    throw new ChatTemplateError((err as Error).message);
  }
}
