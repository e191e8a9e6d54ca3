// labmand's OpenAI-compatible gateway, driven by the official openai SDK:
// one labmand in front of four labman-devllm runtimes (openai, ollama, a
// vLLM one that streams slowly, and an openai one that always fails).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { client, lastJSON } from './lib/client.mjs';
import { Procs, waitModels } from './lib/procs.mjs';
import { commonTests, MESSAGES } from './lib/suite.mjs';

const NODE = 'conf-gw';
const MAX_BODY = 65536;
const ctx = {
    chatModels: ['gpt-dev', 'llama3.2:1b'],
    model: 'gpt-dev',
    allModels: ['gpt-dev', 'embed-dev', 'llama3.2:1b', 'broken', 'slow-vllm'],
    maxBody: MAX_BODY,
    direct: {},
    fail: { model: 'broken' },
    abort: { model: 'slow-vllm' },
};
const procs = new Procs('gateway');

before(async () => {
    try {
        const [oai, oll, fail, slow] = await Promise.all([
            procs.devllm('devllm-openai', 'openai', ['gpt-dev', 'embed-dev']),
            procs.devllm('devllm-ollama', 'ollama', ['llama3.2:1b']),
            procs.devllm('devllm-fail', 'openai', ['broken'], ['--fail-rate', '1']),
            procs.devllm('devllm-vllm', 'vllm', ['slow-vllm'],
                ['--tokens-per-sec', '40', '--max-tokens', '64']),
        ]);
        const d = await procs.labmand(NODE, {
            gateway: `max_body_bytes = ${MAX_BODY}\n`,
            endpoints: [oai, oll, fail, slow].map((e) => ({ name: e.name, url: e.url, kind: e.flavor })),
        });
        ctx.baseURL = d.baseURL;
        ctx.fail.baseURL = d.baseURL;
        ctx.abort.baseURL = d.baseURL;
        ctx.abort.metrics = `${slow.url}/metrics`;
        ctx.direct['gpt-dev'] = `${oai.url}/v1`;
        ctx.direct['llama3.2:1b'] = `${oll.url}/v1`;
        await waitModels(d.baseURL, ctx.allModels);
    } catch (e) {
        e.message += `\n${procs.logs()}`;
        throw e;
    }
});

after(() => procs.stopAll());

commonTests(ctx);

test('models carry labman\'s extra fields', async () => {
    const c = client(ctx.baseURL);
    await c.models.list();
    const body = await lastJSON(c, 'ListModelsResponse');
    for (const m of body.data) {
        assert.match(m.owned_by, new RegExp(NODE), `owned_by names the serving node: ${JSON.stringify(m)}`);
        assert.ok('context_length' in m, `context_length: ${JSON.stringify(m)}`);
        assert.equal(typeof m.loaded, 'boolean', `loaded: ${JSON.stringify(m)}`);
    }
});

test('answers carry X-Labman-Request-Id, X-Labman-Node, X-Labman-Route', async () => {
    const c = client(ctx.baseURL);
    const { response } = await c.chat.completions
        .create({ model: 'gpt-dev', messages: MESSAGES, max_tokens: 2 }).withResponse();
    assert.ok(response.headers.get('x-labman-request-id'));
    assert.ok(response.headers.get('x-labman-node'));
    assert.equal(response.headers.get('x-labman-route'), 'local');
    const { response: r2 } = await c.chat.completions
        .create({ model: 'gpt-dev', messages: MESSAGES, max_tokens: 2 }).withResponse();
    assert.notEqual(r2.headers.get('x-labman-request-id'), response.headers.get('x-labman-request-id'));
});

test('model@node pins the node', async () => {
    const c = client(ctx.baseURL);
    const data = await c.chat.completions.create(
        { model: `gpt-dev@${NODE}`, messages: MESSAGES, max_tokens: 2 });
    await lastJSON(c, 'CreateChatCompletionResponse');
    assert.equal(data.choices[0].finish_reason, 'length');
});
