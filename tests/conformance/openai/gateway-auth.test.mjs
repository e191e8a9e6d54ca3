// The gateway with auth = "keys": the SDK's AuthenticationError (401),
// PermissionDeniedError (403) and RateLimitError (429), each body an OpenAI
// ErrorResponse.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';

import OpenAI from 'openai';

import { client, expectAPIError, lastJSON, raw, rawError } from './lib/client.mjs';
import { bin, Procs, waitModels } from './lib/procs.mjs';
import { MESSAGES } from './lib/suite.mjs';

const procs = new Procs('auth');
const keys = {};
let baseURL;
let keySource = '';

// A new key from `labman key new NAME --models GLOB [--rpm N]`, the way an
// operator makes one: the key on the first line, then a [[gateway.keys]]
// stanza for the config (with key_sha256), which goes into the config as
// printed. Until that command exists, the same made here: a random
// "lm-" + 43 base64url chars, hashed with node's crypto.
async function newKey(name, models, rpm) {
    const args = ['key', 'new', name, '--models', models];
    if (rpm) args.push('--rpm', String(rpm));
    const out = await new Promise((resolve) => {
        execFile(bin('labman'), args, { timeout: 5000 },
            (err, stdout) => resolve(err ? null : stdout));
    });
    if (out !== null) {
        const key = out.split('\n')[0].trim();
        assert.match(key, /^lm-[A-Za-z0-9_-]{43}$/, `labman key new printed: ${out}`);
        const sha256 = crypto.createHash('sha256').update(key).digest('hex');
        const printed = out.match(/^key_sha256 = "([0-9a-f]{64})"$/m)?.[1];
        assert.equal(printed, sha256, `labman key new: the stanza's hash is the key's:\n${out}`);
        const stanza = out.slice(out.indexOf('[[gateway.keys]]'));
        keySource = 'labman key new';
        return { key, sha256, stanza };
    }
    keySource = 'node crypto (labman key new is not there)';
    const key = `lm-${crypto.randomBytes(32).toString('base64url')}`;
    const sha256 = crypto.createHash('sha256').update(key).digest('hex');
    return { key, sha256, name, models: [models], rpm };
}

before(async () => {
    try {
        keys.full = await newKey('full', 'allowed*');
        keys.limited = await newKey('limited', 'allowed*', 1);
        const dev = await procs.devllm('devllm-openai', 'openai', ['allowed-chat', 'secret-chat']);
        const d = await procs.labmand('conf-auth', {
            gateway: 'auth = "keys"\n',
            keys: [keys.full, keys.limited],
            endpoints: [{ name: dev.name, url: dev.url, kind: 'openai' }],
        });
        baseURL = d.baseURL;
        await waitModels(baseURL, ['allowed-chat', 'secret-chat'],
            { authorization: `Bearer ${keys.full.key}` });
    } catch (e) {
        e.message += `\n${procs.logs()}`;
        throw e;
    }
});

after(() => procs.stopAll());

test('a valid key is served', async (t) => {
    t.diagnostic(`keys from ${keySource}`);
    const c = client(baseURL, { apiKey: keys.full.key });
    const data = await c.chat.completions.create({ model: 'allowed-chat', messages: MESSAGES });
    await lastJSON(c, 'CreateChatCompletionResponse');
    assert.equal(data.choices[0].finish_reason, 'stop');
    const stream = await c.chat.completions.create(
        { model: 'allowed-chat', messages: MESSAGES, stream: true, stream_options: { include_usage: true } });
    let usage = null;
    for await (const ch of stream) usage = ch.usage ?? usage;
    assert.deepEqual(usage, data.usage);
});

test('401 AuthenticationError: a wrong key, and no key at all', async () => {
    const c = client(baseURL, { apiKey: `lm-${'x'.repeat(43)}` });
    await expectAPIError(c, () => c.chat.completions.create(
        { model: 'allowed-chat', messages: MESSAGES }), OpenAI.AuthenticationError, 401);
    await expectAPIError(c, () => c.embeddings.create(
        { model: 'allowed-chat', input: 'x' }), OpenAI.AuthenticationError, 401);
    const r = await raw(`${baseURL}/chat/completions`,
        { body: JSON.stringify({ model: 'allowed-chat', messages: MESSAGES }) });
    rawError(r, 401);
});

test('403 PermissionDeniedError: a model outside the key\'s allow-list', async () => {
    const c = client(baseURL, { apiKey: keys.full.key });
    const err = await expectAPIError(c, () => c.chat.completions.create(
        { model: 'secret-chat', messages: MESSAGES }), OpenAI.PermissionDeniedError, 403);
    assert.match(err.message, /secret-chat/);
});

test('429 RateLimitError: a key with rpm = 1, with Retry-After', async () => {
    const c = client(baseURL, { apiKey: keys.limited.key });
    await c.chat.completions.create({ model: 'allowed-chat', messages: MESSAGES, max_tokens: 1 });
    const err = await expectAPIError(c, () => c.chat.completions.create(
        { model: 'allowed-chat', messages: MESSAGES, max_tokens: 1 }), OpenAI.RateLimitError, 429);
    const ra = Number(err.headers.get('retry-after'));
    assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= 60, `Retry-After: ${ra}`);
    // Other keys are not limited by it.
    const c2 = client(baseURL, { apiKey: keys.full.key });
    await c2.chat.completions.create({ model: 'allowed-chat', messages: MESSAGES, max_tokens: 1 });
});
