#!/usr/bin/env node
// Runs the Cloudsmith generator, transpiled by jco, in Node.js and prints the
// result of `generate` as one line of JSON:
//
//   {"ok":[["auth","..."],["expiry","..."]]}
//   {"err":{"case":"unauthorized","value":{"status":401,"detail":"..."}}}
//
// Usage:
//   node run.mjs <transpiled-dir> <manifest-file> <namespace>
//                [--env NAME[=VALUE]]... [--dir HOST[::GUEST]]...
//
// <transpiled-dir> holds `generator.js` from `jco transpile --name generator`
// and must sit below this folder: its `@bytecodealliance/preview2-shim`
// imports then resolve to the same module instances as ours, which is how the
// --env and --dir settings below reach the guest.
//
// Like `wasmtime run`, the guest sees only what it is given: the environment
// is exactly the --env pairs, and only the --dir directories are preopened.
// (A token-source supplied from JavaScript, token-source.mjs, reads the Node.js
// process's own environment instead: it is host code, not guest.)
//
// Output is in WIT terms (kebab-case case and field names, `null` for `none`)
// so that tests compare it with the wasmtime CLI's WAVE output directly.
// Exit status: 0 when `generate` returned (ok or err), 2 on usage errors or
// a trap.

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { _setEnv } from '@bytecodealliance/preview2-shim/cli';
import { _setPreopens } from '@bytecodealliance/preview2-shim/filesystem';

function usage(message) {
  process.stderr.write(`run.mjs: ${message}\n` +
    'usage: node run.mjs <transpiled-dir> <manifest-file> <namespace> [--env NAME[=VALUE]]... [--dir HOST[::GUEST]]...\n');
  process.exit(2);
}

function parseArgs(argv) {
  const positional = [];
  const env = {};
  const preopens = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--env' || arg === '--dir') {
      const value = argv[++i];
      if (value === undefined) usage(`${arg} needs a value`);
      if (arg === '--env') {
        // NAME=VALUE sets; a bare NAME passes this process's value on (as
        // `wasmtime run --env NAME` does), keeping secrets off command lines.
        const eq = value.indexOf('=');
        if (eq === 0) usage(`--env wants NAME=VALUE or NAME, got ${JSON.stringify(value)}`);
        if (eq > 0) env[value.slice(0, eq)] = value.slice(eq + 1);
        else if (process.env[value] !== undefined) env[value] = process.env[value];
      } else {
        const sep = value.indexOf('::');
        const [host, guest] = sep < 0 ? [value, value] : [value.slice(0, sep), value.slice(sep + 2)];
        preopens[guest] = resolve(host);
      }
    } else if (arg.startsWith('--')) {
      usage(`unknown option ${arg}`);
    } else {
      positional.push(arg);
    }
  }
  if (positional.length !== 3) usage('expected <transpiled-dir> <manifest-file> <namespace>');
  const [dir, manifestFile, namespace] = positional;
  return { dir: resolve(dir), manifestFile, namespace, env, preopens };
}

/** camelCase (jco) to kebab-case (WIT). */
const kebab = (s) => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** A jco value in WIT terms: record fields kebab-case, `none` as null. */
function witValue(v) {
  if (v === undefined || v === null) return null;
  if (Array.isArray(v)) return v.map(witValue);
  if (typeof v === 'object') {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [kebab(k), witValue(x)]));
  }
  return v;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

async function main() {
  const { dir, manifestFile, namespace, env, preopens } = parseArgs(process.argv.slice(2));
  const entry = join(dir, 'generator.js');
  if (!existsSync(entry)) usage(`${entry} not found: transpile with jco transpile ... --name generator -o ${dir}`);
  // jco emits ES modules with .js names; make sure Node.js treats them so.
  const pkg = join(dir, 'package.json');
  if (!existsSync(pkg)) writeFileSync(pkg, '{"type":"module"}\n');

  // Confine the guest before it is instantiated (instantiation happens when
  // the module is imported).
  _setEnv(env);
  _setPreopens(preopens);

  const manifest = readFileSync(manifestFile, 'utf8');
  const { generator } = await import(pathToFileURL(entry).href);
  let out;
  try {
    const outputs = generator.generate(manifest, namespace);
    // Each value is list<u8>: decoding with a fatal UTF-8 decoder is
    // lossless, so comparing these strings compares the bytes.
    out = { ok: outputs.map(([key, bytes]) => [key, utf8.decode(bytes)]) };
  } catch (e) {
    if (!(e && Object.prototype.hasOwnProperty.call(e, 'payload'))) throw e;
    const { tag, val } = e.payload;
    out = { err: { case: tag, value: witValue(val) } };
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((e) => {
  process.stderr.write(`run.mjs: ${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});
