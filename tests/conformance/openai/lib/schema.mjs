// Validators for OpenAI's response bodies, compiled from OpenAI's own OpenAPI
// document (../shared/conformance/openai-openapi.json next to the checkout).
//
// The document is OpenAPI 3.1 (JSON Schema 2020-12) with a few OpenAPI-isms
// left in. Only the schemas reachable from the ones we check are taken, and
// converted as follows, nothing else:
//   - `nullable: true` (OpenAPI 3.0) becomes an explicit null alternative;
//   - `discriminator` is dropped: it only names the property that tells the
//     `oneOf` branches apart; the `oneOf` itself is still enforced;
//   - vendor keywords (`x-…`) and `example` are annotations;
//   - formats: ajv-formats for the standard ones; `unixtime` must be an
//     integer, `float` any number.
// Extra properties are allowed wherever the schema allows them (labman adds
// owned_by, context_length, loaded to models).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..', '..', '..');
export const OPENAPI = process.env.LABMAN_OPENAPI ||
    path.resolve(REPO, '..', 'shared', 'conformance', 'openai-openapi.json');

export const ROOTS = [
    'ListModelsResponse',
    'Model',
    'CreateChatCompletionResponse',
    'CreateChatCompletionStreamResponse',
    'CreateCompletionResponse',
    'CreateEmbeddingResponse',
    'ErrorResponse',
];

const PREFIX = '#/components/schemas/';

function refsOf(node, out) {
    if (Array.isArray(node)) {
        for (const x of node) refsOf(x, out);
    } else if (node && typeof node === 'object') {
        for (const [k, v] of Object.entries(node)) {
            if (k === '$ref' && typeof v === 'string') {
                if (!v.startsWith(PREFIX)) throw new Error(`unsupported $ref ${v}`);
                out.push(v.slice(PREFIX.length));
            } else if (k === '$recursiveRef' || k === '$dynamicRef') {
                throw new Error(`unsupported ${k} in a checked schema`);
            } else {
                refsOf(v, out);
            }
        }
    }
}

// Rewrites one schema node (recursively) into plain JSON Schema 2020-12.
// `inProps` is true when node is a `properties` map, whose keys are
// property names, not keywords.
function convert(node, inProps = false) {
    if (Array.isArray(node)) return node.map((x) => convert(x));
    if (!node || typeof node !== 'object') return node;
    const out = {};
    for (const [k, v] of Object.entries(node)) {
        if (inProps) {
            out[k] = convert(v);
        } else if (k === 'discriminator' || k === 'example' || k.startsWith('x-')) {
            continue;
        } else if (k === 'properties' || k === 'patternProperties' || k === '$defs') {
            out[k] = convert(v, true);
        } else if (k === '$ref') {
            out[k] = `#/$defs/${v.slice(PREFIX.length)}`;
        } else {
            out[k] = convert(v);
        }
    }
    if (inProps || out.nullable === undefined) return out;
    const nullable = out.nullable === true;
    delete out.nullable;
    if (!nullable) return out;
    if (out.$ref !== undefined) {
        // A $ref's siblings apply too; keep them on the non-null branch.
        const { description, ...rest } = out;
        const res = { anyOf: [rest, { type: 'null' }] };
        if (description !== undefined) res.description = description;
        return res;
    }
    if (typeof out.type === 'string') out.type = [out.type, 'null'];
    else if (Array.isArray(out.type) && !out.type.includes('null')) out.type = [...out.type, 'null'];
    if (Array.isArray(out.enum) && !out.enum.includes(null)) out.enum = [...out.enum, null];
    if (out.type === undefined && out.enum === undefined) {
        return { anyOf: [out, { type: 'null' }] };
    }
    return out;
}

// OpenAI's document has no schema of a streamed legacy completion chunk: it
// says CreateCompletionResponse serves both. Two of its fields cannot hold in
// a stream, by OpenAI's own words: finish_reason is null until the last
// choice chunk, and with stream_options.include_usage "all other chunks will
// also include a usage field, but with a null value" (ChatCompletionStreamOptions).
// CreateCompletionStreamResponse is CreateCompletionResponse with exactly
// those two fields made nullable; everything else is unchanged.
function completionStream(base) {
    const s = structuredClone(base);
    const fr = s.properties?.choices?.items?.properties?.finish_reason;
    if (!fr || fr.type !== 'string' || !Array.isArray(fr.enum) || !s.properties.usage?.$ref) {
        throw new Error('CreateCompletionResponse changed shape: revisit completionStream()');
    }
    fr.type = ['string', 'null'];
    fr.enum = [...fr.enum, null];
    s.properties.usage = { anyOf: [s.properties.usage, { type: 'null' }] };
    return s;
}

let cached = null;

// Returns { validate(name, body) → string[] of problems (empty when valid) }.
export function loadSchemas(file = OPENAPI) {
    if (cached) return cached;
    const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    const all = doc?.components?.schemas;
    if (!all) throw new Error(`${file}: no components.schemas`);
    const picked = {};
    const todo = [...ROOTS];
    while (todo.length) {
        const name = todo.pop();
        if (picked[name]) continue;
        if (!all[name]) throw new Error(`${file}: no schema ${name}`);
        picked[name] = convert(all[name]);
        const refs = [];
        refsOf(all[name], refs);
        todo.push(...refs);
    }
    picked.CreateCompletionStreamResponse = completionStream(picked.CreateCompletionResponse);
    // Only annotation keywords are left unknown to ajv after convert(), so
    // strict mode stays on: any keyword we did not expect fails the load.
    const ajv = new Ajv2020({ allErrors: true, strict: true, strictTypes: false,
                              strictTuples: false, strictRequired: false });
    addFormats(ajv);
    ajv.addFormat('unixtime', { type: 'number', validate: (x) => Number.isInteger(x) });
    ajv.addFormat('float', { type: 'number', validate: () => true });
    ajv.addSchema({ $id: 'openai', $defs: picked });
    const compiled = {};
    const get = (name) => {
        if (!compiled[name]) {
            const v = ajv.getSchema(`openai#/$defs/${name}`);
            if (!v) throw new Error(`schema ${name} not loaded`);
            compiled[name] = v;
        }
        return compiled[name];
    };
    for (const r of [...ROOTS, 'CreateCompletionStreamResponse']) get(r);
    cached = {
        names: Object.keys(picked),
        validate(name, body) {
            const v = get(name);
            if (v(body)) return [];
            return v.errors.map((e) => `${e.instancePath || '/'} ${e.message}` +
                (e.params && Object.keys(e.params).length ? ` ${JSON.stringify(e.params)}` : ''));
        },
    };
    return cached;
}

// node:assert-style check with a message naming the schema and the problems.
export function assertSchema(name, body, what = '') {
    const problems = loadSchemas().validate(name, body);
    if (problems.length) {
        const e = new Error(`${what ? what + ': ' : ''}body does not match ${name}:\n  ` +
            problems.join('\n  ') + `\nbody: ${JSON.stringify(body).slice(0, 2000)}`);
        e.code = 'ERR_SCHEMA';
        throw e;
    }
}
