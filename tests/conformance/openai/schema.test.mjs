// The validators themselves: they accept OpenAI's own examples and reject
// bodies that break the schema, so a passing API check means something.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';

import { loadSchemas, OPENAPI } from './lib/schema.mjs';

const s = loadSchemas();
const doc = JSON.parse(fs.readFileSync(OPENAPI, 'utf8')).components.schemas;

test('OpenAI\'s own examples validate', () => {
    for (const name of ['CreateChatCompletionResponse', 'CreateCompletionResponse', 'Model']) {
        const example = JSON.parse(doc[name]['x-oaiMeta'].example);
        assert.deepEqual(s.validate(name, example), [], name);
    }
    // Embedding's example elides the vector ("...."), so only its shape is taken.
    assert.deepEqual(s.validate('CreateEmbeddingResponse', {
        object: 'list', model: 'm', usage: { prompt_tokens: 1, total_tokens: 1 },
        data: [{ object: 'embedding', index: 0, embedding: [0.0023064255, -0.009327292] }],
    }), []);
});

const chat = {
    id: 'chatcmpl-1', object: 'chat.completion', created: 1700000000, model: 'm',
    choices: [{ index: 0, message: { role: 'assistant', content: 'hi', refusal: null },
                logprobs: null, finish_reason: 'stop' }],
    usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
};
const chunk = {
    id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1700000000, model: 'm',
    choices: [{ index: 0, delta: { content: 'x' }, logprobs: null, finish_reason: null }],
    usage: null,
};

test('bodies that break the schema are rejected', () => {
    const bad = [
        ['ErrorResponse', { error: { message: 'x', type: 't' } }], // param, code required
        ['ErrorResponse', { message: 'x' }],
        ['CreateChatCompletionResponse', { ...chat, created: 1.5 }],
        ['CreateChatCompletionResponse', { ...chat, object: 'chat.completion.chunk' }],
        ['CreateChatCompletionResponse', { ...chat, choices: [{ ...chat.choices[0], finish_reason: null }] }],
        ['CreateChatCompletionResponse', { ...chat, usage: { prompt_tokens: 1 } }],
        ['CreateChatCompletionStreamResponse', { ...chunk, choices: [{ index: 0, delta: {} }] }],
        ['CreateChatCompletionStreamResponse', { ...chunk, choices: [{ ...chunk.choices[0], finish_reason: 'done' }] }],
        ['CreateCompletionResponse', { id: 'c', object: 'text_completion', created: 1, model: 'm',
            choices: [{ index: 0, text: 'x', logprobs: null, finish_reason: null }] }],
        ['CreateCompletionResponse', { id: 'c', object: 'text_completion', created: 1, model: 'm',
            choices: [], usage: null }],
        ['CreateEmbeddingResponse', { object: 'list', model: 'm', data: [{ object: 'embedding',
            index: 0, embedding: 'AAAA' }], usage: { prompt_tokens: 1, total_tokens: 1 } }],
        ['ListModelsResponse', { object: 'list', data: [{ id: 'm', object: 'model', created: 1 }] }],
    ];
    for (const [name, body] of bad) {
        assert.notDeepEqual(s.validate(name, body), [], `${name} accepted ${JSON.stringify(body)}`);
    }
});

test('nullable and the streamed-completion exception are exactly as wide as documented', () => {
    assert.deepEqual(s.validate('CreateChatCompletionStreamResponse', chunk), []);
    assert.deepEqual(s.validate('CreateChatCompletionStreamResponse', { ...chunk, usage: undefined }), []);
    const c = { id: 'c', object: 'text_completion', created: 1, model: 'm',
                choices: [{ index: 0, text: 'x', logprobs: null, finish_reason: null }], usage: null };
    assert.deepEqual(s.validate('CreateCompletionStreamResponse', c), []);
    assert.notDeepEqual(s.validate('CreateCompletionStreamResponse',
        { ...c, choices: [{ ...c.choices[0], finish_reason: 'done' }] }), []);
    assert.notDeepEqual(s.validate('CreateCompletionStreamResponse', { ...c, usage: 3 }), []);
    // extra fields are fine where the schema does not forbid them
    assert.deepEqual(s.validate('Model', { id: 'm', object: 'model', created: 1, owned_by: 'n',
                                           context_length: 4096, loaded: true }), []);
});
