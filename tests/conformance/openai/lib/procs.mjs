// Real processes for the conformance tests: labman-devllm runtimes and
// labmand gateways on free loopback ports, with temp configs and data dirs.
// Everything started through a Procs is stopped by procs.stopAll(), which the
// test files call from after() so it runs whether the tests passed or not.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { REPO } from './schema.mjs';

export const BUILD = path.resolve(REPO, process.env.LABMAN_BUILD || 'build');

export function bin(name) {
    const p = path.join(BUILD, name);
    if (!fs.existsSync(p)) throw new Error(`${p} is not built (run make)`);
    return p;
}

export function freePort() {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.unref();
        s.on('error', reject);
        s.listen(0, '127.0.0.1', () => {
            const { port } = s.address();
            s.close(() => resolve(port));
        });
    });
}

function canConnect(port) {
    return new Promise((resolve) => {
        const c = net.connect({ host: '127.0.0.1', port });
        c.once('connect', () => { c.destroy(); resolve(true); });
        c.once('error', () => resolve(false));
    });
}

// Polls fn() (async, truthy when done) every 25 ms until timeoutMs.
export async function waitFor(what, fn, timeoutMs = 10000) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
        try {
            const v = await fn();
            if (v) return v;
        } catch (e) {
            last = e;
        }
        if (Date.now() > deadline) {
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}` +
                (last ? `: ${last.message}` : ''));
        }
        await sleep(25);
    }
}

// TOML basic string.
const q = (s) => JSON.stringify(String(s));

export class Procs {
    constructor(label) {
        this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `labman-conf-${label}-`));
        this.children = [];
        // A safety net for a runner that exits without after(): never leave
        // daemons behind.
        this.onExit = () => {
            for (const c of this.children) {
                if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
            }
        };
        process.on('exit', this.onExit);
    }

    start(name, args, port) {
        const logPath = path.join(this.dir, `${name}.log`);
        const fd = fs.openSync(logPath, 'w');
        const child = spawn(args[0], args.slice(1), { stdio: ['ignore', fd, fd] });
        fs.closeSync(fd);
        child.labmanName = name;
        child.logPath = logPath;
        child.exited = new Promise((resolve) => child.once('exit', (code, sig) => resolve({ code, sig })));
        this.children.push(child);
        return waitFor(`${name} to listen on ${port}`, async () => {
            if (child.exitCode !== null) {
                throw new Error(`${name} exited with ${child.exitCode}:\n${this.log(child)}`);
            }
            return canConnect(port);
        }).then(() => child);
    }

    log(child) {
        try {
            return fs.readFileSync(child.logPath, 'utf8');
        } catch {
            return '';
        }
    }

    // labman-devllm with extra options; returns { port, url, child }.
    async devllm(name, flavor, models, extra = []) {
        const port = await freePort();
        const child = await this.start(name, [bin('labman-devllm'), '--flavor', flavor,
            '--listen', `127.0.0.1:${port}`, '--models', models.join(','), ...extra], port);
        return { name, port, url: `http://127.0.0.1:${port}`, child, flavor, models };
    }

    // labmand in front of the given endpoints ({ name, url, kind, ... } as
    // [[endpoints]] entries). gateway is extra [gateway] lines; keys are
    // [[gateway.keys]]: { stanza } as `labman key new` prints it, or
    // { name, sha256, models, rpm, tpm, max_concurrent }. Returns { gw, admin, baseURL, child, config }.
    async labmand(name, { endpoints = [], gateway = '', keys = [] } = {}) {
        const gw = await freePort();
        const admin = await freePort();
        const data = path.join(this.dir, `${name}-data`);
        fs.mkdirSync(data, { mode: 0o700 });
        fs.chmodSync(data, 0o700);
        let t = `[node]\nname = ${q(name)}\ndata_dir = ${q(data)}\nlog_level = "debug"\n\n` +
            `[gateway]\nlisten = "127.0.0.1:${gw}"\n${gateway}\n` +
            `[admin]\nlisten = "127.0.0.1:${admin}"\n\n` +
            `[discovery]\nscan_local = false\n`;
        for (const k of keys) {
            if (k.stanza) {
                t += `\n${k.stanza}`;
                continue;
            }
            t += `\n[[gateway.keys]]\nname = ${q(k.name)}\nkey_sha256 = ${q(k.sha256)}\n`;
            if (k.models) t += `models = [${k.models.map(q).join(', ')}]\n`;
            for (const lim of ['rpm', 'tpm', 'max_concurrent']) {
                if (k[lim] !== undefined) t += `${lim} = ${k[lim]}\n`;
            }
        }
        for (const e of endpoints) {
            t += `\n[[endpoints]]\nname = ${q(e.name)}\nurl = ${q(e.url)}\n` +
                `kind = ${q(e.kind || e.flavor || 'auto')}\n`;
            if (e.max_concurrent !== undefined) t += `max_concurrent = ${e.max_concurrent}\n`;
        }
        const config = path.join(this.dir, `${name}.toml`);
        fs.writeFileSync(config, t);
        const child = await this.start(name, [bin('labmand'), '-c', config], gw);
        return { name, gw, admin, baseURL: `http://127.0.0.1:${gw}/v1`, child, config };
    }

    async stopAll() {
        const live = this.children.filter((c) => c.exitCode === null && c.signalCode === null);
        for (const c of live) c.kill('SIGTERM');
        await Promise.all(live.map(async (c) => {
            const t = setTimeout(() => c.kill('SIGKILL'), 5000);
            await c.exited;
            clearTimeout(t);
        }));
        process.off('exit', this.onExit);
        if (!process.env.LABMAN_KEEP_TMP) fs.rmSync(this.dir, { recursive: true, force: true });
    }

    // The logs of every process, for a failure message.
    logs() {
        return this.children.map((c) => `--- ${c.labmanName}\n${this.log(c).slice(-4000)}`).join('\n');
    }
}

// GET baseURL/models until every id in want is listed; returns the list.
export async function waitModels(baseURL, want, headers = {}, timeoutMs = 20000) {
    return waitFor(`${baseURL}/models to list ${want.join(', ')}`, async () => {
        const r = await fetch(`${baseURL}/models`, { headers });
        if (r.status !== 200) throw new Error(`status ${r.status}: ${await r.text()}`);
        const body = await r.json();
        const ids = new Set((body.data || []).map((m) => m.id));
        const missing = want.filter((m) => !ids.has(m));
        if (missing.length) throw new Error(`missing ${missing.join(', ')}; have ${[...ids].join(', ')}`);
        return body;
    }, timeoutMs);
}
