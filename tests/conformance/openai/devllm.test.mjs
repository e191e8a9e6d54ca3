// labman-devllm's own /v1, checked with the same SDK calls and schemas as
// the gateway: the fake runtime must answer in OpenAI's shapes, or every
// gateway check built on it would be checking the wrong thing.
import { after, before } from 'node:test';

import { Procs } from './lib/procs.mjs';
import { commonTests } from './lib/suite.mjs';

const MAX_BODY = 65536;
const ctx = {
    chatModels: ['gpt-dev'],
    model: 'gpt-dev',
    allModels: ['gpt-dev', 'embed-dev'],
    maxBody: MAX_BODY,
    direct: {},
    fail: { model: 'broken' },
    abort: { model: 'slow-vllm' },
    busy: { model: 'busy' },
};
const procs = new Procs('devllm');

before(async () => {
    const [main, fail, slow, busy] = await Promise.all([
        procs.devllm('openai', 'openai', ['gpt-dev', 'embed-dev'],
            ['--max-body-bytes', String(MAX_BODY)]),
        procs.devllm('fail', 'openai', ['broken'], ['--fail-rate', '1']),
        procs.devllm('vllm', 'vllm', ['slow-vllm'],
            ['--tokens-per-sec', '40', '--max-tokens', '64']),
        procs.devllm('busy', 'openai', ['busy'],
            ['--max-concurrent', '1', '--tokens-per-sec', '40', '--max-tokens', '64']),
    ]);
    ctx.baseURL = `${main.url}/v1`;
    ctx.direct['gpt-dev'] = ctx.baseURL;
    ctx.fail.baseURL = `${fail.url}/v1`;
    ctx.abort.baseURL = `${slow.url}/v1`;
    ctx.abort.metrics = `${slow.url}/metrics`;
    ctx.busy.baseURL = `${busy.url}/v1`;
});

after(() => procs.stopAll());

commonTests(ctx);
