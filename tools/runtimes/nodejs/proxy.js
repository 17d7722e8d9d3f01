'use strict';
// Loom's action proxy for Node.js functions: the OpenWhisk action proxy contract.
// node:* modules only (Node.js 18 or later).
//
// HTTP/1.1 on 0.0.0.0:$PORT (default 8080), keep-alive; several /run calls can
// be in flight at once.
//
// POST /init {"value": {"name", "main", "code", "binary", "env"}}
//   Loads the action, once. code is CommonJS source, or with binary true the
//   base64 of a bundle (tar.gz or zip, at most 64 MiB unpacked, no absolute
//   paths, no "..", no link that leads out) whose entry point is package.json's
//   "main", else index.js (an ES module is imported). It is unpacked in
//   $LOOM_ACTION_DIR (else a new directory under the temporary directory), the
//   working directory from then on. main names the function (default "main"):
//   exports[main], module.exports itself when it is a function, or a top-level
//   function of that name in plain code. env entries become environment
//   variables before the code loads.
//   200 {"ok": true}; 403 once /init has been tried; 502 {"error"} when the code
//   does not load; 400 when the body is not an /init request.
// POST /run {"value": {params}, "activation_id", "action_name", "namespace",
//            "deadline" (epoch ms), ...}
//   Calls main(value) and awaits what it returns. 200 with the object (any
//   other value as {"body": value}); 502 {"error": "Type: message"} when it
//   throws, rejects or has not settled at the deadline; 403 {"error": "not
//   initialized"} before a successful /init. Every other top-level string or
//   number K of the body is __OW_K (upper case) in process.env as the call
//   reads it (AsyncLocalStorage); the process environment, which child
//   processes inherit, holds the latest call's values.
// GET /health
//   200 once listening.
//
// Lines the function writes to process.stdout and process.stderr (console.*)
// during a call, and from callbacks it started, go to the proxy's stdout and
// stderr prefixed with "<activation_id> ". The proxy's own messages carry no id.

const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const zlib = require('node:zlib');
const { AsyncLocalStorage } = require('node:async_hooks');
const { pathToFileURL } = require('node:url');

const MAX_BODY = 128 << 20;
const MAX_UNPACKED = 64 << 20;
const TOP_LEVEL_MAIN = Symbol.for('loom.main');

// The call being run: { id, env, partial: { stdout, stderr } }.
const calls = new AsyncLocalStorage();

const baseEnv = process.env;
process.env = new Proxy(baseEnv, {
  get(target, key) {
    const own = calls.getStore()?.env;
    return own && Object.hasOwn(own, key) ? own[key] : target[key];
  },
  has(target, key) {
    const own = calls.getStore()?.env;
    return (own && Object.hasOwn(own, key)) || key in target;
  },
  ownKeys(target) {
    const own = calls.getStore()?.env ?? {};
    return [...new Set([...Reflect.ownKeys(target), ...Object.keys(own)])];
  },
  getOwnPropertyDescriptor(target, key) {
    const own = calls.getStore()?.env;
    if (own && Object.hasOwn(own, key)) {
      return { value: own[key], writable: true, enumerable: true, configurable: true };
    }
    return Reflect.getOwnPropertyDescriptor(target, key);
  },
});

// Replaces stream.write so that a call's complete lines go out with its id;
// returns the original write, for the proxy's own output.
function prefixLines(stream, key) {
  const write = stream.write.bind(stream);
  stream.write = (chunk, encoding, cb) => {
    const call = calls.getStore();
    if (!call?.id) return write(chunk, encoding, cb);
    if (typeof encoding === 'function') [cb, encoding] = [encoding, undefined];
    const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString();
    const lines = (call.partial[key] + text).split('\n');
    call.partial[key] = lines.pop();
    if (lines.length === 0) {
      if (cb) process.nextTick(cb);
      return true;
    }
    return write(lines.map((l) => `${call.id} ${l}\n`).join(''), cb);
  };
  return write;
}
const writeOut = prefixLines(process.stdout, 'stdout');
const writeErr = prefixLines(process.stderr, 'stderr');

function endCall(call) {
  if (call.partial.stdout) writeOut(`${call.id} ${call.partial.stdout}\n`);
  if (call.partial.stderr) writeErr(`${call.id} ${call.partial.stderr}\n`);
  call.partial = { stdout: '', stderr: '' };
}

function log(message) {
  writeErr(`proxy: ${message}\n`);
}

function describe(e) {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return typeof e === 'string' ? e : String(JSON.stringify(e));
}

class BundleError extends Error {
  get name() {
    return 'BundleError';
  }
}

// A bundle entry's path relative to the action directory; null for the top itself.
function cleanName(name) {
  if (name.startsWith('/')) throw new BundleError(`entry '${name}' has an absolute path`);
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new BundleError(`entry '${name}' has '..' in its path`);
  return parts.length ? parts.join('/') : null;
}

function cstring(buf) {
  const end = buf.indexOf(0);
  return buf.subarray(0, end < 0 ? buf.length : end).toString('utf8');
}

// pax extended header records: "LENGTH key=value\n".
function paxRecords(buf) {
  const out = {};
  for (let p = 0; p < buf.length; ) {
    const space = buf.indexOf(0x20, p);
    const len = parseInt(buf.toString('latin1', p, space), 10);
    if (space < 0 || !(len > 0)) break;
    const record = buf.toString('utf8', space + 1, p + len - 1);
    const eq = record.indexOf('=');
    out[record.slice(0, eq)] = record.slice(eq + 1);
    p += len;
  }
  return out;
}

// The entries of a tar archive (ustar, GNU long names, pax headers).
function* tarEntries(buf) {
  const kinds = { 0: 'file', 7: 'file', 5: 'dir', 2: 'symlink', 1: 'hardlink' };
  let longName = null;
  let longLink = null;
  let pax = {};
  for (let off = 0; off + 512 <= buf.length; ) {
    const h = buf.subarray(off, off + 512);
    if (h.every((b) => b === 0)) return;
    if (h[124] & 0x80) throw new BundleError('the tar has an entry too large');
    const field = (from, to) => cstring(h.subarray(from, to));
    const size = parseInt(field(124, 136).trim() || '0', 8);
    const type = h[156] === 0 ? '0' : String.fromCharCode(h[156]);
    const data = buf.subarray(off + 512, off + 512 + size);
    if (Number.isNaN(size) || data.length < size) throw new BundleError('the tar is damaged');
    off += 512 + Math.ceil(size / 512) * 512;
    if (type === 'L') longName = cstring(data);
    else if (type === 'K') longLink = cstring(data);
    else if (type === 'x') pax = paxRecords(data);
    else if (type !== 'g') {
      const prefix = h.toString('latin1', 257, 263) === 'ustar\0' ? field(345, 500) : '';
      const name = pax.path ?? longName ?? (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100));
      const link = pax.linkpath ?? longLink ?? field(157, 257);
      longName = longLink = null;
      pax = {};
      if (!kinds[type]) throw new BundleError(`entry '${name}' is not a file, directory or link`);
      const mode = parseInt(field(100, 108).trim() || '0', 8);
      yield { name, kind: kinds[type], mode, link, data: () => data };
    }
  }
}

// The entries of a zip archive, from its central directory.
function* zipEntries(buf) {
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 0xffff); i--) {
    if (buf.readUInt32LE(i) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new BundleError('the zip has no central directory');
  const damaged = () => new BundleError('the zip is damaged');
  let p = buf.readUInt32LE(eocd + 16);
  for (let n = buf.readUInt16LE(eocd + 10); n > 0; n--) {
    if (p + 46 > buf.length || buf.readUInt32LE(p) !== 0x02014b50) throw damaged();
    const unix = buf.readUInt16LE(p + 4) >> 8 === 3;
    const flags = buf.readUInt16LE(p + 8);
    const method = buf.readUInt16LE(p + 10);
    const csize = buf.readUInt32LE(p + 20);
    const nameLen = buf.readUInt16LE(p + 28);
    const mode = unix ? buf.readUInt32LE(p + 38) >>> 16 : 0;
    const local = buf.readUInt32LE(p + 42);
    const name = buf.toString('utf8', p + 46, p + 46 + nameLen);
    p += 46 + nameLen + buf.readUInt16LE(p + 30) + buf.readUInt16LE(p + 32);
    if (flags & 1) throw new BundleError(`entry '${name}' is encrypted`);
    if (local + 30 > buf.length || buf.readUInt32LE(local) !== 0x04034b50) throw damaged();
    const start = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    if (start + csize > buf.length) throw damaged();
    const raw = buf.subarray(start, start + csize);
    const data = (limit) => {
      if (method === 0) return raw;
      if (method !== 8) throw new BundleError(`entry '${name}': compression ${method} not supported`);
      try {
        return zlib.inflateRawSync(raw, { maxOutputLength: Math.max(limit, 1) });
      } catch (e) {
        throw e.code === 'ERR_BUFFER_TOO_LARGE' ? tooLarge() : new BundleError(`entry '${name}': ${e.message}`);
      }
    };
    const kind = name.endsWith('/') ? 'dir' : (mode & 0o170000) === 0o120000 ? 'symlink' : 'file';
    yield { name, kind, mode, link: kind === 'symlink' ? data(4096).toString() : '', data };
  }
}

function tooLarge() {
  return new BundleError(`the bundle unpacks to more than ${MAX_UNPACKED >> 20} MiB`);
}

function lstatOrNull(file) {
  try {
    return fs.lstatSync(file);
  } catch {
    return null;
  }
}

// Unpacks a tar.gz or zip bundle into root, refusing entries that would land outside.
function unpack(buf, root) {
  let entries;
  if (buf[0] === 0x1f && buf[1] === 0x8b) {
    let tar;
    try {
      // headers and padding on top of the content
      tar = zlib.gunzipSync(buf, { maxOutputLength: 2 * MAX_UNPACKED });
    } catch (e) {
      throw e.code === 'ERR_BUFFER_TOO_LARGE' ? tooLarge() : new BundleError(`the tar.gz: ${e.message}`);
    }
    entries = tarEntries(tar);
  } else if (buf.length >= 22 && buf.readUInt16LE(0) === 0x4b50) {
    entries = zipEntries(buf);
  } else {
    throw new BundleError('the bundle is neither a tar.gz nor a zip');
  }
  let total = 0;
  const links = [];
  for (const e of entries) {
    const rel = cleanName(e.name);
    if (rel === null) continue;
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) {
      if (lstatOrNull(path.join(root, ...parts.slice(0, i)))?.isSymbolicLink()) {
        throw new BundleError(`entry '${e.name}' lies under a link`);
      }
    }
    const file = path.join(root, rel);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const st = lstatOrNull(file);
    if (st && !(e.kind === 'dir' && st.isDirectory())) {
      if (st.isDirectory()) throw new BundleError(`entry '${e.name}' replaces a directory`);
      fs.unlinkSync(file);
    }
    if (e.kind === 'dir') {
      fs.mkdirSync(file, { recursive: true });
    } else if (e.kind === 'file') {
      const data = e.data(MAX_UNPACKED - total + 1);
      total += data.length;
      if (total > MAX_UNPACKED) throw tooLarge();
      fs.writeFileSync(file, data, { flag: 'wx' });
      fs.chmodSync(file, e.mode & 0o111 ? 0o755 : 0o644);
    } else if (e.kind === 'symlink') {
      const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(rel), e.link));
      if (e.link.startsWith('/') || resolved === '..' || resolved.startsWith('../')) {
        throw new BundleError(`link '${e.name}' -> '${e.link}' leads out of the action`);
      }
      fs.symlinkSync(e.link, file);
      links.push([e.name, e.link, file]);
    } else {
      const source = path.join(root, cleanName(e.link) ?? '.');
      if (!lstatOrNull(source)?.isFile()) {
        throw new BundleError(`hard link '${e.name}' -> '${e.link}' is not to a file`);
      }
      fs.linkSync(source, file);
    }
  }
  // A link can pass through other links: check where each one really ends.
  const top = fs.realpathSync.native(root);
  for (const [name, link, file] of links) {
    let real;
    try {
      real = fs.realpathSync.native(file);
    } catch {
      continue; // dangling: the lexical check above is all there is to check
    }
    if (real !== top && !real.startsWith(top + path.sep)) {
      throw new BundleError(`link '${name}' -> '${link}' leads out of the action`);
    }
  }
}

const action = { tried: false, main: null };

async function load(value) {
  for (const [k, v] of Object.entries(value.env ?? {})) {
    process.env[k] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  let root = process.env.LOOM_ACTION_DIR;
  if (root) fs.mkdirSync(root, { recursive: true, mode: 0o700 });
  else root = fs.mkdtempSync(path.join(os.tmpdir(), 'action-'));
  const name = (value.main || 'main').replace(/^(module\.)?exports\./, '');
  if (value.binary) {
    const code = value.code.replace(/\s/g, '');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(code)) throw new BundleError('the code is not base64');
    unpack(Buffer.from(code, 'base64'), root);
  } else {
    // a top-level function is not exported: the appended line hands it over
    const handOver = /^[A-Za-z_$][\w$]*$/.test(name)
      ? `globalThis[Symbol.for('loom.main')] = typeof ${name} === 'function' ? ${name} : undefined;`
      : '';
    fs.writeFileSync(path.join(root, 'index.js'), `${value.code}\n;${handOver}\n`);
  }
  process.chdir(root);
  const entry = require.resolve(root); // package.json's "main", else index.js
  let mod;
  try {
    mod = require(entry);
  } catch (e) {
    if (e.code !== 'ERR_REQUIRE_ESM') throw e;
    mod = await import(pathToFileURL(entry).href);
  }
  const candidates = [mod?.[name], typeof mod === 'function' ? mod : null, globalThis[TOP_LEVEL_MAIN]];
  const fn = candidates.find((f) => typeof f === 'function');
  if (!fn) throw new Error(`the action has no function named '${name}'`);
  return fn;
}

async function init(msg) {
  const value = msg.value;
  if (typeof value !== 'object' || value === null || typeof value.code !== 'string') {
    return [400, { error: 'the body needs value.code, a string' }];
  }
  if (action.tried) return [403, { error: 'cannot initialize the action more than once' }];
  action.tried = true;
  try {
    action.main = await load(value);
  } catch (e) {
    log(`init failed: ${describe(e)}`);
    return [502, { error: describe(e) }];
  }
  return [200, { ok: true }];
}

class DeadlineError extends Error {
  constructor() {
    super('the action did not finish before its deadline');
  }
}

async function run(msg) {
  if (!action.main) return [403, { error: 'not initialized' }];
  const env = {};
  for (const [k, v] of Object.entries(msg)) {
    if (k !== 'value' && (typeof v === 'string' || typeof v === 'number')) {
      env[`__OW_${k.toUpperCase()}`] = String(v);
    }
  }
  Object.assign(baseEnv, env); // for child processes: the latest call's values
  const call = { id: msg.activation_id || null, env, partial: { stdout: '', stderr: '' } };
  const outcome = await calls.run(call, async () => {
    let timer;
    try {
      const result = action.main(msg.value ?? {});
      const left = Number(msg.deadline) - Date.now();
      // setTimeout takes at most 2^31 - 1 ms: a deadline further off is none
      if (!(left < 2 ** 31)) return { result: await result };
      const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new DeadlineError()), Math.max(left, 0));
      });
      return { result: await Promise.race([result, late]) };
    } catch (e) {
      if (!(e instanceof DeadlineError)) console.error(e);
      return { error: e };
    } finally {
      clearTimeout(timer);
      if (call.id) endCall(call);
    }
  });
  if ('error' in outcome) {
    const late = outcome.error instanceof DeadlineError;
    return [502, { error: late ? outcome.error.message : describe(outcome.error) }];
  }
  let body;
  try {
    body = JSON.stringify(outcome.result);
    if (body === undefined || body[0] !== '{') body = JSON.stringify({ body: outcome.result ?? null });
  } catch (e) {
    return [502, { error: `the result is not JSON: ${describe(e)}` }];
  }
  return [200, body];
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(Object.assign(new Error('the body is too large'), { status: 413 }));
        req.destroy();
      } else {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function handle(req, res) {
  const answer = (status, obj) => {
    const body = typeof obj === 'string' ? obj : JSON.stringify(obj);
    res.writeHead(status, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
    });
    res.end(body);
  };
  if (req.method === 'GET' && req.url === '/health') return answer(200, { ok: true });
  if (req.method !== 'POST' || (req.url !== '/init' && req.url !== '/run')) {
    return answer(404, { error: 'not found' });
  }
  let msg;
  try {
    msg = JSON.parse(await readBody(req));
  } catch (e) {
    return answer(e.status ?? 400, { error: e.status ? e.message : `the body is not JSON: ${e.message}` });
  }
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
    return answer(400, { error: 'the body is not a JSON object' });
  }
  return answer(...(await (req.url === '/init' ? init(msg) : run(msg))));
}

// SIGTERM and SIGINT end the proxy at once: the platform stops an instance only
// when no call uses it any more, or when a call ran past its deadline; as PID 1
// of a container, node would otherwise ignore them.
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    log(`stopping on ${sig}`);
    process.exit(0);
  });
}
process.on('uncaughtException', (e) => log(`uncaught exception: ${e?.stack ?? e}`));
process.on('unhandledRejection', (e) => log(`unhandled rejection: ${e?.stack ?? e}`));

const port = Number(process.env.PORT) || 8080;
const server = http.createServer({ requestTimeout: 0, keepAliveTimeout: 0 }, (req, res) => {
  handle(req, res).catch((e) => {
    log(`request failed: ${e?.stack ?? e}`);
    if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ error: describe(e) }));
  });
});
server.keepAliveTimeout = 0;
server.listen(port, '0.0.0.0', () => log(`listening on 0.0.0.0:${port}`));
