// POST /v1/chat/completions, OpenAI-compatible. The conversation is rendered into a prompt by the
// model package's chat template (tokenizer_config.json `chat_template`, Jinja: text/chat-template.ts)
// and generated from like a completion (generation.ts): without session_id in a session of its own,
// deleted afterwards; with session_id the caller's session is continued, its memory being the context,
// and the rendered messages and the reply are appended to it (send only the new messages then).
// stream=true answers with chat.completion.chunk server-sent events.
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import { ChatTemplateError, renderChatTemplate, type ChatMessage } from '../../text/chat-template.ts';
import type { CatalogModel } from '../../model/model-catalog.ts';
import type { TextTokenizer } from '../../text/tokenizer.ts';
import type { TokenLogprob } from '../../queue/request.ts';
import type { ApiDeps } from '../deps.ts';
import { ApiError } from '../errors.ts';
import { DEFAULT_CHAT_MAX_TOKENS, MAX_TOKENS, generateRequest } from '../../queue/generate-request.ts';
import { observeRequests } from '../metrics.ts';
import { ChatCompletionSchema, SessionIdSchema } from '../schemas.ts';
import { admit } from '../queue-errors.ts';
import {
  completionOf, generateOnce, generationModel, generationResponses, Nullable, openAiFinish, openSession, samplingOf, STOP_SHAPE, StopSchema, stopList,
  streamGeneration, usageOf, validationError, type AjvError,
} from '../generation.ts';

// Re-exported for callers that imported the default from here.
export { DEFAULT_CHAT_MAX_TOKENS };

const TextPart = Type.Object(
  { type: Type.Literal('text'), text: Type.String() },
  { additionalProperties: false },
);

const Message = Type.Object(
  {
    role: Type.Union([Type.Literal('system'), Type.Literal('developer'), Type.Literal('user'), Type.Literal('assistant'), Type.Literal('tool')]),
    // null: an assistant message that only called tools.
    content: Nullable(Type.Union([Type.String(), Type.Array(TextPart)])),
    name: Type.Optional(Type.String()),
    tool_call_id: Type.Optional(Type.String()),
    tool_calls: Type.Optional(Nullable(Type.Array(Type.Unknown()))),
    refusal: Type.Optional(Nullable(Type.String())),
  },
  { additionalProperties: false },
);

export const ChatCompletionBody = Type.Object(
  {
    model: Type.String({ minLength: 1 }),
    messages: Type.Array(Message, { minItems: 1 }),
    max_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 1, maximum: MAX_TOKENS, description: `default ${DEFAULT_CHAT_MAX_TOKENS}` }))),
    max_completion_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 1, maximum: MAX_TOKENS, description: `default ${DEFAULT_CHAT_MAX_TOKENS}` }))),
    temperature: Type.Optional(Nullable(Type.Number({ minimum: 0, maximum: 2 }))),
    top_p: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1 }))),
    // Extensions, as on /v1/completions and the websocket: the same sampling whichever route.
    top_k: Type.Optional(Nullable(Type.Integer({ minimum: 0 }))),
    repetition_penalty: Type.Optional(Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 10 }))),
    n: Type.Optional(Nullable(Type.Integer({ minimum: 1 }))),
    stream: Type.Optional(Nullable(Type.Boolean())),
    stream_options: Type.Optional(Nullable(Type.Object({ include_usage: Type.Optional(Nullable(Type.Boolean())) }, { additionalProperties: false }))),
    stop: Type.Optional(StopSchema),
    seed: Type.Optional(Nullable(Type.Integer())),
    logprobs: Type.Optional(Nullable(Type.Boolean())),
    top_logprobs: Type.Optional(Nullable(Type.Integer({ minimum: 0, maximum: 5 }))),
    presence_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2 }))),
    frequency_penalty: Type.Optional(Nullable(Type.Number({ minimum: -2, maximum: 2 }))),
    logit_bias: Type.Optional(Nullable(Type.Record(Type.String(), Type.Number()))),
    user: Type.Optional(Nullable(Type.String())),
    // Accepted so that clients sending them unchanged get a clear 400 unless they are no-ops.
    tools: Type.Optional(Nullable(Type.Array(Type.Unknown()))),
    tool_choice: Type.Optional(Type.Unknown({ description: 'only "none" (or null) is accepted' })),
    parallel_tool_calls: Type.Optional(Nullable(Type.Boolean())),
    response_format: Type.Optional(Nullable(Type.Object({ type: Type.String() }))),
    session_id: Type.Optional(SessionIdSchema),
  },
  { additionalProperties: false, title: 'ChatCompletionRequest' },
);
export type ChatCompletionBody = Static<typeof ChatCompletionBody>;

const FIELD_SHAPES: Record<string, string> = {
  messages: 'messages must be a non-empty array of {role: system|developer|user|assistant|tool, content: a string or an array of text parts {type: "text", text}}',
  stop: STOP_SHAPE,
};

function unsupported(param: string, message: string): ApiError {
  return new ApiError('invalid_request', message, param, 'unsupported_parameter');
}

/** Refuses OpenAI features this service does not implement, each with a 400 naming the parameter. */
function refuseUnsupported(b: ChatCompletionBody): void {
  if ((b.n ?? 1) !== 1) throw unsupported('n', `n = ${b.n} is not supported: rmt-serve returns exactly one choice per request (n must be 1)`);
  if (b.tools && b.tools.length > 0) throw unsupported('tools', 'tools are not supported: the models only continue text (send no tools)');
  if (b.tool_choice !== undefined && b.tool_choice !== null && b.tool_choice !== 'none') {
    throw unsupported('tool_choice', 'tool_choice is not supported: the models call no tools (send none or "none")');
  }
  if (b.response_format && b.response_format.type !== 'text') {
    throw unsupported('response_format', `response_format ${JSON.stringify(b.response_format.type)} is not supported: only {"type": "text"}`);
  }
  if (b.logit_bias && Object.keys(b.logit_bias).length > 0) throw unsupported('logit_bias', 'logit_bias is not supported (send null or {})');
  if ((b.top_logprobs ?? 0) > 0 && b.logprobs !== true) {
    throw new ApiError('invalid_request', 'top_logprobs requires logprobs to be true', 'top_logprobs', 'invalid_value');
  }
}

/** The messages as the template sees them: text parts joined into one string, null content as ''. */
function templateMessages(messages: ChatCompletionBody['messages']): ChatMessage[] {
  return messages.map((m) => {
    const content = m.content === null ? '' : typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('');
    const out: ChatMessage = { role: m.role, content };
    if (m.name !== undefined) out.name = m.name;
    if (m.tool_call_id !== undefined) out.tool_call_id = m.tool_call_id;
    if (m.tool_calls) out.tool_calls = m.tool_calls;
    return out;
  });
}

/** The conversation rendered by the model's chat template, or a 400 saying why not. */
export function renderConversation(model: CatalogModel, messages: ChatCompletionBody['messages']): string {
  if (model.chatTemplate === undefined) {
    throw new ApiError(
      'invalid_request',
      `model '${model.name}' has no chat template, so it cannot serve chat completions: add a "chat_template" (a Hugging Face ` +
        `Jinja template) to the tokenizer_config.json of its package (models/${model.name}/tokenizer_config.json), ` +
        'or send the prompt text to /v1/completions',
      'model', 'chat_template_missing',
    );
  }
  try {
    return renderChatTemplate(model.chatTemplate, templateMessages(messages), {
      addGenerationPrompt: true,
      ...(model.bosToken !== undefined ? { bosToken: model.bosToken } : {}),
      ...(model.eosToken !== undefined ? { eosToken: model.eosToken } : {}),
    });
  } catch (err) {
    if (!(err instanceof ChatTemplateError)) throw err;
    throw new ApiError('invalid_request', `the chat template of model '${model.name}' failed to render these messages: ${err.message}`, 'messages', 'chat_template_error');
  }
}

interface TopLogprob {
  token: string;
  logprob: number;
  bytes: number[];
}
interface ChatLogprobs {
  content: (TopLogprob & { top_logprobs: TopLogprob[] })[];
}

/** OpenAI's chat logprobs object for generated tokens; `top`: alternatives kept per token. */
function chatLogprobs(ids: readonly number[], lps: readonly TokenLogprob[], tokenizer: TextTokenizer, top: number): ChatLogprobs {
  const entry = (id: number, logprob: number): TopLogprob => {
    const token = tokenizer.decode([id]);
    return { token, logprob, bytes: tokenizer.tokenBytes?.(id) ?? Array.from(Buffer.from(token, 'utf8')) };
  };
  return {
    content: ids.map((id, i) => ({ ...entry(id, lps[i]!.logprob), top_logprobs: lps[i]!.top.slice(0, top).map((c) => entry(c.id, c.logprob)) })),
  };
}

export default async function chatCompletionsRoutes(app: FastifyInstance, deps: ApiDeps): Promise<void> {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  observeRequests(app);

  r.post('/v1/chat/completions', {
    schema: {
      operationId: 'createChatCompletion', tags: ['chat'], summary: 'Create a chat completion',
      description: "OpenAI-compatible. The messages are rendered into a prompt by the model package's chat template (400 chat_template_missing " +
        'without one), then generated as a completion; with session_id the session is continued. stream: true answers with chat.completion.chunk events.',
      body: ChatCompletionBody,
      response: generationResponses('chat completion', ChatCompletionSchema),
    },
    attachValidation: true,
  }, async (req, reply) => {
    const startedAt = performance.now();
    if (req.validationError) throw validationError(req.validationError as Error & { validation?: AjvError[] }, FIELD_SHAPES);
    const body = req.body;
    refuseUnsupported(body);

    const { model, tokenizer } = generationModel(deps, req, body.model);

    const text = renderConversation(model, body.messages);
    const sampling = samplingOf(body);
    await admit(deps, reply);
    const top = body.top_logprobs ?? 0;
    const request = generateRequest({
      text, maxTokens: body.max_completion_tokens ?? body.max_tokens ?? DEFAULT_CHAT_MAX_TOKENS, sampling, stop: stopList(body.stop),
      // The worker returns log-probabilities only with at least one alternative; extras are dropped here.
      ...(body.logprobs === true ? { logprobs: Math.max(1, top) } : {}),
    });

    const emptyPrompt = text === '' ? new ApiError('invalid_request', 'the chat template rendered these messages as empty text', 'messages', 'empty_prompt') : undefined;
    const session = await openSession(deps, req.owner, model, body.session_id, emptyPrompt);

    const id = `chatcmpl-${randomUUID().replaceAll('-', '')}`;
    const created = Math.floor(Date.now() / 1000);
    const extra = body.session_id !== undefined ? { session_id: body.session_id } : {};

    if (!body.stream) {
      const result = await generateOnce(deps, reply, session, request);
      const c = completionOf(result);
      return {
        id, object: 'chat.completion' as const, created, model: model.name,
        choices: [{
          index: 0,
          message: { role: 'assistant' as const, content: c.text, refusal: null },
          logprobs: c.logprobs ? chatLogprobs(c.ids, c.logprobs, tokenizer, top) : null,
          finish_reason: openAiFinish(c.finishReason),
        }],
        usage: usageOf(result),
        ...extra,
      };
    }

    // Streamed: chat.completion.chunk objects.
    const includeUsage = body.stream_options?.include_usage === true;
    const chunk = (delta: { role?: 'assistant'; content?: string }, finish: 'stop' | 'length' | null, logprobs: ChatLogprobs | null = null) => ({
      id, object: 'chat.completion.chunk', created, model: model.name,
      choices: [{ index: 0, delta, logprobs, finish_reason: finish }],
      ...(includeUsage ? { usage: null } : {}),
      ...extra,
    });
    return streamGeneration(deps, req, reply, [{ index: 0, sessionId: session.id, request }], {
      opening: () => [chunk({ role: 'assistant', content: '' }, null)],
      token: (_i, ev) => {
        // With logprobs every token gets its chunk (its text may be '' while a stop prefix or a split
        // character is held back).
        if (ev.logprob) return chunk({ content: ev.text }, null, chatLogprobs([ev.id], [ev.logprob], tokenizer, top));
        return ev.text === '' ? undefined : chunk({ content: ev.text }, null);
      },
      text: (_i, t) => chunk({ content: t }, null),
      finish: (_i, reason) => chunk({}, reason),
      ...(includeUsage ? { usage: (usage) => ({ id, object: 'chat.completion.chunk', created, model: model.name, choices: [], usage, ...extra }) } : {}),
    }, { startedAt, cleanup: () => session.cleanup() });
  });
}
