// The OpenAI API checks shared by every target (labmand's gateway, and
// labman-devllm's own /v1 as a cheap check of the fake runtime's shapes).
//
// ctx is filled by the test file's before():
//   baseURL      the target's /v1
//   chatModels   models to run the chat checks on
//   direct       { model: devllm /v1 URL } to compare answers and usage with
//   model        the model for completions, embeddings and error checks
//   maxBody      the target's largest request body
//   fail         { baseURL, model } where every upstream answers 500
//   abort        { baseURL, model, metrics } a slow model on a vLLM devllm
//                whose /metrics shows its running requests
//   busy         optional { baseURL, model }: a devllm --max-concurrent 1
//                target, for RateLimitError without auth keys
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import OpenAI from 'openai';

import { client, expectAPIError, lastJSON, lastSSE, raw, rawError } from './client.mjs';
import { assertSchema } from './schema.mjs';
import { waitFor } from './procs.mjs';

const MESSAGES = [
    { role: 'system', content: 'You are a terse lab assistant.' },
    { role: 'user', content: 'Say something about the homelab rack please' },
];
const PROMPT_WORDS = 13; // devllm: one token per whitespace-separated word

// devllm's answer for body, asked directly (non-streamed).
async function directAnswer(url, path, body) {
    const r = await raw(`${url}${path}`, { body: JSON.stringify({ ...body, stream: false }) });
    assert.equal(r.status, 200, `devllm direct ${path}: ${r.text}`);
    return JSON.parse(r.text);
}

function words(s) {
    return s.split(/\s+/).filter(Boolean).length;
}

async function vllmRunning(metricsURL) {
    const r = await fetch(metricsURL);
    const text = await r.text();
    let n = 0;
    for (const line of text.split('\n')) {
        const m = line.match(/^vllm:num_requests_running(?:\{[^}]*\})?\s+([0-9.eE+-]+)/);
        if (m) n += Number(m[1]);
    }
    return n;
}

export function commonTests(ctx) {
    test('models.list returns a ListModelsResponse with every model', async () => {
        const c = client(ctx.baseURL);
        const page = await c.models.list();
        const body = await lastJSON(c, 'ListModelsResponse');
        const ids = page.data.map((m) => m.id);
        assert.deepEqual(ids, body.data.map((m) => m.id));
        for (const m of ctx.allModels) assert.ok(ids.includes(m), `${m} not in ${ids}`);
        for (const m of body.data) assertSchema('Model', m);
    });

    test('models.retrieve returns a Model', async (t) => {
        const probe = await raw(`${ctx.baseURL}/models/${encodeURIComponent(ctx.model)}`,
            { method: 'GET' });
        // ctx.model is listed, so a 404 here means the route is not served
        // (SPEC §5 does not ask for it).
        if (probe.status === 404 || probe.status === 405) {
            t.skip(`GET /v1/models/{id} is not served here (${probe.status} ${probe.text})`);
            return;
        }
        const c = client(ctx.baseURL);
        const m = await c.models.retrieve(ctx.model);
        const body = await lastJSON(c, 'Model');
        assert.equal(m.id, ctx.model);
        assert.equal(body.id, ctx.model);
        await expectAPIError(c, () => c.models.retrieve('no-such-model'), OpenAI.NotFoundError, 404);
    });

    for (const model of ctx.chatModels) {
        test(`chat.completions.create (${model}): non-streaming`, async () => {
            const c = client(ctx.baseURL);
            const { data, response } = await c.chat.completions
                .create({ model, messages: MESSAGES }).withResponse();
            assert.equal(response.status, 200);
            const body = await lastJSON(c, 'CreateChatCompletionResponse');
            assert.equal(data.id, body.id);
            assert.equal(data.object, 'chat.completion');
            assert.equal(data.choices.length, 1);
            const ch = data.choices[0];
            assert.equal(ch.message.role, 'assistant');
            assert.ok(ch.message.content.length > 0);
            assert.equal(ch.finish_reason, 'stop');
            const direct = await directAnswer(ctx.direct[model], '/chat/completions',
                { model, messages: MESSAGES });
            assert.equal(ch.message.content, direct.choices[0].message.content);
            assert.deepEqual(data.usage, direct.usage);
            assert.equal(data.usage.prompt_tokens, PROMPT_WORDS);
            assert.equal(data.usage.completion_tokens, words(ch.message.content));
        });

        test(`chat.completions.create (${model}): max_tokens ends with "length"`, async () => {
            const c = client(ctx.baseURL);
            const data = await c.chat.completions.create({ model, messages: MESSAGES, max_tokens: 3 });
            await lastJSON(c, 'CreateChatCompletionResponse');
            assert.equal(data.choices[0].finish_reason, 'length');
            assert.equal(data.usage.completion_tokens, 3);
            assert.equal(words(data.choices[0].message.content), 3);
        });

        test(`chat.completions.create (${model}): stream with include_usage`, async () => {
            const c = client(ctx.baseURL);
            const stream = await c.chat.completions.create({
                model, messages: MESSAGES, stream: true, stream_options: { include_usage: true },
            });
            const got = [];
            for await (const chunk of stream) {
                assertSchema('CreateChatCompletionStreamResponse', chunk, 'SDK chunk');
                got.push(chunk);
            }
            const { chunks, done } = await lastSSE(c, 'CreateChatCompletionStreamResponse');
            assert.ok(done, 'the stream ends with data: [DONE]');
            assert.deepEqual(got, chunks, 'the SDK yields each event as sent');
            assert.ok(got.length >= 3);
            assert.equal(got[0].choices[0].delta.role, 'assistant');
            const last = got[got.length - 1];
            assert.deepEqual(last.choices, [], 'the usage chunk has no choices');
            for (const ch of got.slice(0, -1)) {
                assert.ok(ch.usage === null || ch.usage === undefined,
                    `usage before the last chunk: ${JSON.stringify(ch)}`);
                assert.equal(ch.choices.length, 1);
                assert.equal(ch.id, got[0].id, 'every chunk has the same id');
            }
            const finish = got.filter((ch) => ch.choices[0]?.finish_reason);
            assert.equal(finish.length, 1);
            assert.equal(finish[0].choices[0].finish_reason, 'stop');
            const text = got.map((ch) => ch.choices[0]?.delta?.content ?? '').join('');
            const direct = await directAnswer(ctx.direct[model], '/chat/completions',
                { model, messages: MESSAGES });
            assert.equal(text, direct.choices[0].message.content);
            assert.deepEqual(last.usage, direct.usage, 'exact usage, as the runtime counted');
        });

        test(`chat.completions.create (${model}): stream without include_usage`, async () => {
            const c = client(ctx.baseURL);
            const stream = await c.chat.completions.create({ model, messages: MESSAGES, stream: true });
            const got = [];
            for await (const chunk of stream) got.push(chunk);
            const { chunks, done } = await lastSSE(c, 'CreateChatCompletionStreamResponse');
            assert.ok(done, 'the stream ends with data: [DONE]');
            assert.deepEqual(got, chunks);
            for (const ch of chunks) {
                assert.ok(ch.usage === null || ch.usage === undefined,
                    `a usage the client did not ask for: ${JSON.stringify(ch)}`);
                assert.equal(ch.choices.length, 1, 'no usage-only chunk');
            }
            const text = got.map((ch) => ch.choices[0].delta.content ?? '').join('');
            const direct = await directAnswer(ctx.direct[model], '/chat/completions',
                { model, messages: MESSAGES });
            assert.equal(text, direct.choices[0].message.content);
        });
    }

    test('completions.create with suffix', async () => {
        const c = client(ctx.baseURL);
        const req = { model: ctx.model, prompt: 'def fib(n):', suffix: 'return fib(n - 1) + x',
                      max_tokens: 8 };
        const { data } = await c.completions.create(req).withResponse();
        const body = await lastJSON(c, 'CreateCompletionResponse');
        assert.deepEqual(data.choices, body.choices);
        assert.equal(data.object, 'text_completion');
        assert.equal(data.choices[0].finish_reason, 'length');
        assert.equal(words(data.choices[0].text), 8);
        assert.equal(data.usage.prompt_tokens, words(req.prompt) + words(req.suffix));
        assert.equal(data.usage.completion_tokens, 8);
        const direct = await directAnswer(ctx.direct[ctx.model], '/completions', req);
        assert.equal(data.choices[0].text, direct.choices[0].text);
        assert.deepEqual(data.usage, direct.usage);
    });

    test('completions.create streaming: chunks are completion objects', async () => {
        const c = client(ctx.baseURL);
        const stream = await c.completions.create({
            model: ctx.model, prompt: 'a b c', suffix: 'd', stream: true,
            stream_options: { include_usage: true },
        });
        let text = '';
        let usage = null;
        for await (const chunk of stream) {
            text += chunk.choices[0]?.text ?? '';
            if (chunk.usage) usage = chunk.usage;
        }
        const { chunks, done } = await lastSSE(c, 'CreateCompletionStreamResponse');
        assert.ok(done);
        assert.ok(chunks.length >= 2);
        const last = chunks[chunks.length - 1];
        assert.deepEqual(last.choices, []);
        assertSchema('CreateCompletionResponse', last, 'the usage chunk');
        for (const ch of chunks.slice(0, -1)) assert.equal(ch.usage ?? null, null);
        assert.equal(usage.prompt_tokens, 4);
        assert.equal(usage.completion_tokens, words(text));
    });

    test('embeddings.create: float, SDK-default base64 and explicit base64', async () => {
        const c = client(ctx.baseURL);
        const input = ['the rack hums', 'cold aisle'];
        const dims = 64;

        const f = await c.embeddings.create({ model: ctx.model, input, dimensions: dims,
                                              encoding_format: 'float' });
        const fbody = await lastJSON(c, 'CreateEmbeddingResponse');
        assert.equal(JSON.parse(c.recorder.last().requestBody).encoding_format, 'float');
        assert.equal(f.data.length, 2);
        for (const [i, e] of f.data.entries()) {
            assert.equal(e.index, i);
            assert.equal(e.embedding.length, dims);
            assert.ok(e.embedding.every((x) => typeof x === 'number'));
        }
        assert.deepEqual(f.data, fbody.data);
        assert.equal(f.usage.prompt_tokens, 5);
        assert.notDeepEqual(f.data[0].embedding, f.data[1].embedding);

        // No encoding_format: the SDK asks for base64 and decodes it itself.
        const d = await c.embeddings.create({ model: ctx.model, input, dimensions: dims });
        assert.equal(JSON.parse(c.recorder.last().requestBody).encoding_format, 'base64');
        const dbody = await base64Body(c, dims);
        for (const [i, e] of d.data.entries()) {
            assert.ok(Array.isArray(e.embedding), 'the SDK decoded the vector');
            assert.deepEqual(e.embedding, dbody.data[i].embedding);
            close(e.embedding, f.data[i].embedding);
        }

        // Explicit base64: the SDK hands the string through.
        const b = await c.embeddings.create({ model: ctx.model, input, dimensions: dims,
                                              encoding_format: 'base64' });
        const bbody = await base64Body(c, dims);
        for (const [i, e] of b.data.entries()) {
            assert.equal(typeof e.embedding, 'string');
            close(decode(e.embedding), f.data[i].embedding);
            assert.deepEqual(decode(e.embedding), bbody.data[i].embedding);
        }
    });

    test('400 BadRequestError: messages not an array', async () => {
        const c = client(ctx.baseURL);
        const err = await expectAPIError(c, () => c.chat.completions.create(
            { model: ctx.model, messages: 'hello' }), OpenAI.BadRequestError, 400);
        assert.equal(err.type, 'invalid_request_error');
    });

    test('400 for malformed JSON (raw request)', async () => {
        const r = await raw(`${ctx.baseURL}/chat/completions`,
            { body: '{"model": "' + ctx.model + '", "messages": [' });
        const e = rawError(r, 400);
        assert.equal(e.type, 'invalid_request_error');
    });

    test('404 NotFoundError: unknown model', async () => {
        const c = client(ctx.baseURL);
        const err = await expectAPIError(c, () => c.chat.completions.create(
            { model: 'no-such-model:7b', messages: MESSAGES }), OpenAI.NotFoundError, 404);
        assert.match(err.message, /no-such-model/);
        assert.match(err.message, /models/, 'the message says how to see the available models');
        await expectAPIError(c, () => c.embeddings.create(
            { model: 'no-such-model:7b', input: 'x' }), OpenAI.NotFoundError, 404);
    });

    test('413: a body over max_body_bytes', async () => {
        const big = 'word '.repeat(Math.ceil(ctx.maxBody / 5) + 100);
        const c = client(ctx.baseURL);
        const err = await expectAPIError(c, () => c.chat.completions.create(
            { model: ctx.model, messages: [{ role: 'user', content: big }] }), OpenAI.APIError, 413);
        assert.ok(!(err instanceof OpenAI.BadRequestError));
        const r = await raw(`${ctx.baseURL}/chat/completions`, {
            body: JSON.stringify({ model: ctx.model, messages: [{ role: 'user', content: big }] }),
        });
        rawError(r, 413);
        // The target keeps serving.
        await c.chat.completions.create({ model: ctx.model, messages: MESSAGES, max_tokens: 1 });
    });

    test('5xx InternalServerError when every upstream fails', async () => {
        const c = client(ctx.fail.baseURL);
        const err = await expectAPIError(c, () => c.chat.completions.create(
            { model: ctx.fail.model, messages: MESSAGES }), OpenAI.InternalServerError);
        assert.ok(err.status >= 500 && err.status <= 599, `status ${err.status}`);
        const serr = await expectAPIError(c, () => c.chat.completions.create(
            { model: ctx.fail.model, messages: MESSAGES, stream: true }), OpenAI.InternalServerError);
        assert.ok(serr.status >= 500);
    });

    if (ctx.busy) {
        test('429 RateLimitError while the only slot streams', async () => {
            const c = client(ctx.busy.baseURL);
            const ac = new AbortController();
            const stream = await c.chat.completions.create(
                { model: ctx.busy.model, messages: MESSAGES, stream: true }, { signal: ac.signal });
            const it = stream[Symbol.asyncIterator]();
            await it.next();
            const c2 = client(ctx.busy.baseURL);
            const err = await expectAPIError(c2, () => c2.chat.completions.create(
                { model: ctx.busy.model, messages: MESSAGES }), OpenAI.RateLimitError, 429);
            assert.ok(Number(err.headers.get('retry-after')) >= 1, 'Retry-After');
            ac.abort();
            // Events already read may still come; then the stream ends quietly.
            while (!(await it.next()).done);
            assert.equal((await c.recorder.last().body).complete, false);
        });
    }

    // openai v6: an abort before the answer's headers rejects the call with
    // APIUserAbortError; an abort mid-stream ends the for-await loop quietly
    // (Stream swallows the AbortError). Both must free the runtime's slot.
    test('abort mid-stream: the stream stops and the runtime sees the cancel', async () => {
        const a = ctx.abort;
        const c = client(a.baseURL);
        await waitFor('nothing running', async () => (await vllmRunning(a.metrics)) === 0, 5000);
        const ac = new AbortController();
        const stream = await c.chat.completions.create(
            { model: a.model, messages: MESSAGES, stream: true }, { signal: ac.signal });
        let n = 0;
        for await (const chunk of stream) {
            assertSchema('CreateChatCompletionStreamResponse', chunk);
            if (++n === 3) {
                assert.equal(await vllmRunning(a.metrics), 1, 'running while streaming');
                ac.abort();
            }
        }
        assert.equal(n, 3, 'no chunk after the abort');
        const { complete } = await c.recorder.last().body;
        assert.equal(complete, false, 'the body was cut by the abort');
        await waitFor('vllm running count back to 0', async () =>
            (await vllmRunning(a.metrics)) === 0, 5000);
        // The slot is free for the next request.
        await c.chat.completions.create({ model: a.model, messages: MESSAGES, max_tokens: 1 });
    });

    test('abort before the answer: APIUserAbortError and the runtime sees the cancel', async () => {
        const a = ctx.abort;
        const c = client(a.baseURL);
        await waitFor('nothing running', async () => (await vllmRunning(a.metrics)) === 0, 5000);
        const ac = new AbortController();
        // Not streamed: the headers come with the whole answer, ~1.6 s later.
        const call = c.chat.completions.create({ model: a.model, messages: MESSAGES },
                                               { signal: ac.signal });
        await waitFor('the request to run', async () => (await vllmRunning(a.metrics)) === 1, 5000);
        ac.abort();
        await assert.rejects(call, OpenAI.APIUserAbortError);
        await waitFor('vllm running count back to 0', async () =>
            (await vllmRunning(a.metrics)) === 0, 5000);
    });
}

function decode(b64) {
    const buf = Buffer.from(b64, 'base64');
    assert.equal(buf.length % 4, 0);
    return Array.from(new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4));
}

function close(a, b) {
    assert.equal(a.length, b.length);
    for (let i = 0; i < a.length; i++) {
        assert.ok(Math.abs(a[i] - b[i]) < 1e-5, `component ${i}: ${a[i]} vs ${b[i]}`);
    }
}

// A base64 embeddings body. OpenAI's schema types `embedding` as an array
// of numbers only, though the API (and every OpenAI-compatible runtime)
// sends a base64 string when encoding_format is "base64". The one
// exception made: each string must be strict base64 of dims float32s, and
// is replaced by the decoded vector before the schema check.
async function base64Body(c, dims) {
    const ex = c.recorder.last();
    const { text } = await ex.body;
    assert.equal(ex.status, 200, text);
    const body = JSON.parse(text);
    for (const e of body.data ?? []) {
        assert.equal(typeof e.embedding, 'string', 'base64 was asked for');
        assert.match(e.embedding, /^[A-Za-z0-9+/]*={0,2}$/);
        assert.equal(Buffer.from(e.embedding, 'base64').length, dims * 4);
        e.embedding = decode(e.embedding);
    }
    assertSchema('CreateEmbeddingResponse', body, 'base64 embeddings');
    return body;
}

export { MESSAGES, sleep };
