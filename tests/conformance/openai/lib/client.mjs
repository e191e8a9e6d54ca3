// The official openai SDK client, with a fetch that keeps a copy of every
// response body exactly as it came over the wire, so the tests validate the
// bytes the SDK parsed (not only the objects it hands back).
import assert from 'node:assert/strict';

import OpenAI from 'openai';

import { assertSchema } from './schema.mjs';

export class Recorder {
    constructor() {
        this.exchanges = [];
    }

    fetch = async (url, init = {}) => {
        const res = await globalThis.fetch(url, init);
        const ex = {
            method: init.method || 'GET',
            url: String(url),
            requestBody: typeof init.body === 'string' ? init.body : null,
            status: res.status,
            headers: res.headers,
        };
        // The copy is read in full as it arrives; an aborted stream leaves
        // what came before the abort.
        ex.body = readAll(res.clone());
        this.exchanges.push(ex);
        return res;
    };

    last() {
        assert.ok(this.exchanges.length > 0, 'the SDK sent no request');
        return this.exchanges[this.exchanges.length - 1];
    }

    clear() {
        this.exchanges.length = 0;
    }
}

async function readAll(res) {
    const chunks = [];
    try {
        for await (const c of res.body) chunks.push(Buffer.from(c));
        return { text: Buffer.concat(chunks).toString('utf8'), complete: true };
    } catch (e) {
        return { text: Buffer.concat(chunks).toString('utf8'), complete: false, error: e };
    }
}

export function client(baseURL, opts = {}) {
    const rec = new Recorder();
    const c = new OpenAI({
        baseURL,
        apiKey: opts.apiKey ?? 'sk-none',
        maxRetries: opts.maxRetries ?? 0,
        timeout: opts.timeout ?? 15000,
        fetch: rec.fetch,
    });
    c.recorder = rec;
    return c;
}

// Splits an SSE body into events: [{ event, data }] in order.
export function parseSSE(text) {
    const events = [];
    for (const block of text.split(/\r?\n\r?\n/)) {
        if (!block.trim()) continue;
        const ev = { event: 'message', data: [] };
        for (const line of block.split(/\r?\n/)) {
            if (line.startsWith(':')) continue;
            const i = line.indexOf(':');
            const field = i < 0 ? line : line.slice(0, i);
            let value = i < 0 ? '' : line.slice(i + 1);
            if (value.startsWith(' ')) value = value.slice(1);
            if (field === 'data') ev.data.push(value);
            else if (field === 'event') ev.event = value;
        }
        if (ev.data.length) events.push({ event: ev.event, data: ev.data.join('\n') });
    }
    return events;
}

// The recorded JSON body of the last exchange, validated against schema.
export async function lastJSON(c, schema, status = 200) {
    const ex = c.recorder.last();
    const { text, complete } = await ex.body;
    assert.ok(complete, `body of ${ex.method} ${ex.url} was cut short`);
    assert.equal(ex.status, status, `${ex.method} ${ex.url}: ${text}`);
    assert.match(ex.headers.get('content-type') || '', /^application\/json/i,
        `${ex.method} ${ex.url} content-type`);
    const body = JSON.parse(text);
    assertSchema(schema, body, `${ex.method} ${ex.url}`);
    return body;
}

// The recorded SSE body of the last exchange: every data event but [DONE]
// parsed and validated against schema. Returns { chunks, done }.
export async function lastSSE(c, schema) {
    const ex = c.recorder.last();
    const { text, complete } = await ex.body;
    assert.equal(ex.status, 200, `${ex.method} ${ex.url}: ${text}`);
    assert.match(ex.headers.get('content-type') || '', /^text\/event-stream/i);
    const events = parseSSE(text);
    const chunks = [];
    let done = false;
    for (const ev of events) {
        assert.ok(!done, 'an event after data: [DONE]');
        if (ev.data === '[DONE]') {
            done = true;
            continue;
        }
        assert.equal(ev.event, 'message', `unexpected SSE event type: ${ev.event}`);
        const chunk = JSON.parse(ev.data);
        assertSchema(schema, chunk, `${ex.url} chunk ${chunks.length}`);
        chunks.push(chunk);
    }
    return { chunks, done, complete };
}

// Runs fn (an SDK call) expecting it to throw errorClass with status; checks
// the body the SDK got is an OpenAI ErrorResponse. Returns the error.
export async function expectAPIError(c, fn, errorClass, status) {
    let err;
    try {
        await fn();
    } catch (e) {
        err = e;
    }
    assert.ok(err, `expected ${errorClass.name}, the call succeeded`);
    assert.ok(err instanceof errorClass,
        `expected ${errorClass.name}, got ${err?.constructor?.name}: ${err?.message}`);
    if (status !== undefined) assert.equal(err.status, status, err.message);
    const ex = c.recorder.last();
    const { text } = await ex.body;
    assert.equal(ex.status, err.status);
    assert.match(ex.headers.get('content-type') || '', /^application\/json/i,
        `error content-type, body: ${text}`);
    const body = JSON.parse(text);
    assertSchema('ErrorResponse', body, `${ex.method} ${ex.url} (${ex.status})`);
    assert.ok(body.error.message.length > 0, 'error message is empty');
    assert.deepEqual(err.error, body.error, 'the SDK exposes the error object');
    return err;
}

// A raw request (for what the SDK cannot send: malformed JSON, huge bodies).
export async function raw(url, { method = 'POST', body, headers = {} } = {}) {
    const res = await globalThis.fetch(url, {
        method,
        body,
        headers: { 'content-type': 'application/json', ...headers },
    });
    const text = await res.text();
    return { status: res.status, headers: res.headers, text };
}

// The ErrorResponse in a raw answer, validated.
export function rawError(r, status) {
    assert.equal(r.status, status, r.text);
    assert.match(r.headers.get('content-type') || '', /^application\/json/i);
    const body = JSON.parse(r.text);
    assertSchema('ErrorResponse', body, `raw ${status}`);
    return body.error;
}
