// Interoperability test: the real, unchanged npm client node-kms 0.4.1
// (with node-jose 2.2.0) against `strongroom dev`.
//
// Run:  npm ci && STRONGROOM_BIN=/path/to/strongroom node --test
//
// The suite starts ONE server (fresh --state dir), mints KMS tokens for three
// users (creator, member, outsider), does the ECDHE handshake for each through
// node-kms (Context.createECDHKey, Request.wrap({serverKey:true}),
// Response.unwrap, Context.deriveEphemeralKey) and then drives every method of
// docs protocol.md's Methods table through the channel. Every assertion that
// fails prints the request (bearer redacted) and the decrypted reply.
//
// Env:
//   STRONGROOM_BIN   server binary (default /work/main/target/debug/strongroom)
//   STRONGROOM_LOG=1 copy the server's stderr to ours
//   STRONGROOM_STARTUP_TIMEOUT_MS  (default 60000)

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, access } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import {
  X509Certificate,
  createPublicKey,
  verify as cryptoVerify,
  constants as cryptoConstants,
  randomUUID,
} from 'node:crypto';

import KMS from 'node-kms';
import jose from 'node-jose';

const BIN = process.env.STRONGROOM_BIN || '/work/main/target/debug/strongroom';
const STARTUP_TIMEOUT_MS = Number(process.env.STRONGROOM_STARTUP_TIMEOUT_MS || 60000);

const UUID_RE = '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}';

// ---------------------------------------------------------------- helpers

const b64json = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
const dots = (s) => (String(s).match(/\./g) || []).length;
const kindOf = (s) => ({ 2: 'JWS', 4: 'JWE' })[dots(s)] || `bogus(${dots(s)} dots)`;
const headerOf = (s) => {
  try {
    return b64json(String(s).split('.')[0]);
  } catch {
    return null;
  }
};
const hostOf = (kmsUri) => new URL(kmsUri).hostname;
const unsignedBytes = (b64u) => {
  // strip leading zero octets so that n/e compare by value
  let b = Buffer.from(b64u, 'base64url');
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i += 1;
  return b.subarray(i);
};
const isRfc3339 = (s) =>
  typeof s === 'string' &&
  /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(s) &&
  !Number.isNaN(Date.parse(s));

function redact(body) {
  const copy = JSON.parse(JSON.stringify(body ?? {}));
  const cred = copy.client && copy.client.credential;
  if (cred && typeof cred.bearer === 'string') {
    cred.bearer = `<bearer ${cred.bearer.length} chars>`;
  }
  if (copy.jwk && copy.jwk.d) copy.jwk.d = '<private d>';
  return copy;
}

/** Human-readable account of one exchange, appended to assertion messages. */
function describeX(x) {
  const lines = [
    `  request : ${JSON.stringify(redact(x.request))}`,
    `  reply   : ${x.kind} header=${JSON.stringify(x.header)}`,
  ];
  if (x.unwrapError) {
    lines.push(`  unwrap FAILED in node-kms: ${x.unwrapError.message}`);
    lines.push(`  raw reply: ${String(x.reply).slice(0, 300)}`);
  } else {
    lines.push(`  body    : ${JSON.stringify(x.body)}`);
  }
  return lines.join('\n');
}

function expectStatus(x, status, what = '') {
  assert.equal(
    x.unwrapError,
    null,
    `${what} node-kms could not unwrap the reply\n${describeX(x)}`,
  );
  const ok = Array.isArray(status) ? status.includes(x.status) : x.status === status;
  assert.ok(
    ok,
    `${what} expected status ${JSON.stringify(status)}, got ${x.status}\n${describeX(x)}`,
  );
}

function expectRequestIdEcho(x) {
  assert.equal(
    x.body.requestId,
    x.request.requestId,
    `requestId must be echoed\n${describeX(x)}`,
  );
}

function assertNoKeyMaterial(x) {
  const text = JSON.stringify(x.body || {});
  assert.ok(!('key' in (x.body || {})), `refusal must not carry a key\n${describeX(x)}`);
  assert.ok(!('keys' in (x.body || {})), `refusal must not carry keys\n${describeX(x)}`);
  assert.ok(!/"k"\s*:/.test(text), `refusal must not carry any jwk.k\n${describeX(x)}`);
}

/** Verify a compact JWS with the static RSA JWK independently of node-jose. */
function verifyJwsIndependently(compact, staticJwk) {
  const [h, p, s] = compact.split('.');
  const header = b64json(h);
  const key = createPublicKey({ key: { kty: 'RSA', n: staticJwk.n, e: staticJwk.e }, format: 'jwk' });
  const data = Buffer.from(`${h}.${p}`, 'ascii');
  const sig = Buffer.from(s, 'base64url');
  if (header.alg === 'RS256') return cryptoVerify('sha256', data, key, sig);
  if (header.alg === 'PS256') {
    return cryptoVerify(
      'sha256',
      data,
      { key, padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: 32 },
      sig,
    );
  }
  throw new Error(`unexpected JWS alg ${header.alg}`);
}

// ---------------------------------------------------------------- server

const server = {
  child: null,
  dir: null,
  info: null,
  stderrTail: [],
  extraStdout: [],
  exited: null,
};

function stderrTail() {
  return server.stderrTail.slice(-60).join('\n');
}

async function startServer() {
  try {
    await access(BIN, fsConstants.X_OK);
  } catch {
    throw new Error(
      `strongroom binary not found or not executable at ${BIN} (set STRONGROOM_BIN)`,
    );
  }
  server.dir = await mkdtemp(join(tmpdir(), 'strongroom-node-kms-'));
  const child = spawn(BIN, ['dev', '--listen', '127.0.0.1:0', '--state', server.dir], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: process.env,
  });
  server.child = child;
  process.on('exit', () => {
    if (server.child && server.exited === null) server.child.kill('SIGKILL');
  });

  createInterface({ input: child.stderr }).on('line', (line) => {
    server.stderrTail.push(line);
    if (server.stderrTail.length > 500) server.stderrTail.shift();
    if (process.env.STRONGROOM_LOG) process.stderr.write(`[strongroom] ${line}\n`);
  });

  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      server.exited = { code, signal };
      resolve(server.exited);
    });
  });
  server.exitPromise = exitPromise;

  const firstLine = await new Promise((resolve, reject) => {
    const timer = setTimeout(
      () =>
        reject(
          new Error(
            `no JSON line on stdout within ${STARTUP_TIMEOUT_MS} ms\nstderr:\n${stderrTail()}`,
          ),
        ),
      STARTUP_TIMEOUT_MS,
    );
    let seen = false;
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (!seen) {
        seen = true;
        clearTimeout(timer);
        resolve(line);
      } else {
        server.extraStdout.push(line);
      }
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    exitPromise.then(({ code, signal }) => {
      if (!seen) {
        clearTimeout(timer);
        reject(
          new Error(
            `strongroom dev exited (code ${code}, signal ${signal}) before printing its JSON line\nstderr:\n${stderrTail()}`,
          ),
        );
      }
    });
  });

  try {
    server.info = JSON.parse(firstLine);
  } catch (e) {
    throw new Error(`first stdout line is not JSON: ${JSON.stringify(firstLine)} (${e.message})`);
  }
  return server.info;
}

async function stopServer() {
  if (!server.child) return;
  if (server.exited === null) {
    server.child.kill('SIGTERM');
    const timeout = new Promise((r) => setTimeout(() => r('timeout'), 10000));
    const res = await Promise.race([server.exitPromise, timeout]);
    if (res === 'timeout') {
      server.child.kill('SIGKILL');
      await server.exitPromise;
    }
  }
  if (server.dir) await rm(server.dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------- transport

async function postMessages(messages) {
  const r = await fetch(`${server.info.kms_url}/kms/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ destination: server.info.kms_cluster, kmsMessages: messages }),
  });
  const text = await r.text();
  assert.equal(r.status, 200, `POST /kms/messages -> HTTP ${r.status}: ${text.slice(0, 500)}`);
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    assert.fail(`POST /kms/messages answered non-JSON: ${text.slice(0, 500)}`);
  }
  assert.ok(
    Array.isArray(json.kmsMessages) && json.kmsMessages.length === messages.length,
    `POST /kms/messages must answer kmsMessages[${messages.length}], got ${text.slice(0, 500)}`,
  );
  for (const m of json.kmsMessages) assert.equal(typeof m, 'string', 'each reply is a compact JOSE string');
  return json.kmsMessages;
}

async function mintToken(userId, clientId) {
  const r = await fetch(server.info.token_url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: userId, client_id: clientId }),
  });
  const text = await r.text();
  assert.equal(r.status, 200, `POST token_url -> HTTP ${r.status}: ${text}`);
  const { bearer } = JSON.parse(text);
  assert.equal(typeof bearer, 'string', `token reply must have a string bearer: ${text}`);
  assert.ok(bearer.length > 10, 'bearer looks empty');
  return bearer;
}

/** Turn a reply string into the exchange record (unwrap through node-kms). */
async function unwrapReply(ctx, request, wrapped, reply) {
  const res = new KMS.Response(reply);
  let unwrapError = null;
  try {
    await res.unwrap(ctx);
  } catch (e) {
    unwrapError = e;
  }
  return {
    request: JSON.parse(JSON.stringify(request)),
    wrapped,
    reply,
    kind: kindOf(reply),
    header: headerOf(reply),
    body: unwrapError ? {} : res.body,
    status: unwrapError ? 0 : res.status,
    unwrapError,
  };
}

/** Wrap one request with node-kms, send it, unwrap the reply with node-kms. */
async function exchange(ctx, body, opts = {}) {
  const req = new KMS.Request(body);
  const wrapped = await req.wrap(ctx, opts.serverKey ? { serverKey: true } : {});
  const [reply] = await postMessages([wrapped]);
  return unwrapReply(ctx, req.body, wrapped, reply);
}

// ---------------------------------------------------------------- users

class User {
  constructor(name) {
    this.name = name;
    this.userId = randomUUID();
    this.clientId = `node-kms-interop-${name}_${randomUUID()}`;
    this.bearer = null;
    this.ctx = null; // established channel context
  }

  newContext({ userId = this.userId, bearer = this.bearer } = {}) {
    const ctx = new KMS.Context();
    ctx.clientInfo = { clientId: this.clientId, credential: { userId, bearer } };
    // a deep copy: node-jose must not be able to mutate our reference copy
    ctx.serverInfo = { key: JSON.parse(JSON.stringify(server.info.static_jwk)) };
    return ctx;
  }

  /**
   * The first half of the handshake, exactly as node-kms / Webex drive it.
   * sendPrivate: send createECDHKey()'s jwk as is (it carries `d`, like
   * node-kms's own usecase-ecdhe test); otherwise send only the public part
   * (`(await key.asKey()).toJSON()`, like the Webex SDK).
   */
  async handshake({ sendPrivate = false, ctx = this.newContext() } = {}) {
    const local = await ctx.createECDHKey();
    ctx.ephemeralKey = local;
    const jwk = sendPrivate ? local.jwk : (await local.asKey()).toJSON();
    assert.equal(Boolean(jwk.d), sendPrivate, 'test setup: d present iff sendPrivate');
    const x = await exchange(
      ctx,
      { method: 'create', uri: `${server.info.kms_cluster}/ecdhe`, jwk },
      { serverKey: true },
    );
    return { ctx, local, jwk, x };
  }

  /** Full handshake with all the checks; returns the channel context. */
  async establish({ sendPrivate = false } = {}) {
    const { ctx, jwk, x } = await this.handshake({ sendPrivate });
    assert.equal(x.kind, 'JWS', `handshake reply must be a JWS signed by the static key\n${describeX(x)}`);
    expectStatus(x, 201, `handshake (${this.name}, d ${sendPrivate ? 'sent' : 'not sent'}):`);
    expectRequestIdEcho(x);
    assert.ok(['RS256', 'PS256'].includes(x.header.alg), `JWS alg ${x.header.alg}`);
    assert.equal(x.header.kid, server.info.static_jwk.kid, 'JWS kid must be the static kid (Webex routes on it)');
    assert.ok(verifyJwsIndependently(x.reply, server.info.static_jwk), 'JWS signature (node crypto) must verify with static n/e');

    const key = x.body.key;
    assert.ok(key && typeof key === 'object', `201 must carry key\n${describeX(x)}`);
    const cluster = server.info.kms_cluster.replace(/\/+$/, '');
    assert.match(key.uri, new RegExp(`^${cluster.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}/ecdhe/${UUID_RE}$`), 'ecdhe key uri');
    assert.equal(key.jwk.kty, 'EC');
    assert.equal(key.jwk.crv, 'P-256');
    assert.equal(Buffer.from(key.jwk.x, 'base64url').length, 32, 'server x is 32 bytes');
    assert.equal(Buffer.from(key.jwk.y, 'base64url').length, 32, 'server y is 32 bytes');
    assert.ok(!('d' in key.jwk), 'server must not send its private d');
    assert.ok(
      !(key.jwk.x === jwk.x && key.jwk.y === jwk.y),
      'server must answer with ITS OWN ephemeral key, not echo the client key (echo + client d would be a trivially known secret)',
    );
    assert.ok(isRfc3339(key.expirationDate), `expirationDate must be RFC 3339: ${key.expirationDate}`);
    assert.ok(Date.parse(key.expirationDate) > Date.now() + 60_000, 'expirationDate must be in the future (> 60 s)');
    if (key.createDate !== undefined) assert.ok(isRfc3339(key.createDate), `createDate RFC 3339: ${key.createDate}`);

    this.handshakeHeader = x.header;
    const shared = await ctx.deriveEphemeralKey(key);
    assert.equal(shared.uri, key.uri);
    assert.equal(shared.jwk.kid, key.uri);
    assert.equal(Buffer.from(shared.jwk.k, 'base64url').length, 32);
    ctx.ephemeralKey = shared;
    this.ctx = ctx;
    return ctx;
  }

  /** A request on the established channel. */
  async send(method, uri, fields = {}, { expectChannelReply = true, ctx = this.ctx } = {}) {
    assert.ok(ctx, `${this.name} has no channel (handshake failed earlier)`);
    const x = await exchange(ctx, { method, uri, ...fields });
    if (expectChannelReply) {
      assert.equal(x.kind, 'JWE', `reply on a live channel must be a JWE\n${describeX(x)}`);
      assert.deepEqual(
        { alg: x.header.alg, enc: x.header.enc, kid: x.header.kid },
        { alg: 'dir', enc: 'A256GCM', kid: ctx.ephemeralKey.uri },
        `channel reply header\n${describeX(x)}`,
      );
    }
    return x;
  }
}

// ---------------------------------------------------------------- keys

function checkKeyObject(key, { owner, cluster, what }) {
  const esc = cluster.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  assert.match(key.uri, new RegExp(`^${esc}/keys/${UUID_RE}$`), `${what}: key uri`);
  assert.ok(key.jwk, `${what}: key has jwk`);
  assert.equal(key.jwk.kty, 'oct', `${what}: kty`);
  assert.equal(key.jwk.kid, key.uri, `${what}: jwk.kid == uri`);
  assert.ok(!('use' in key.jwk), `${what}: jwk has no use`);
  assert.ok(!('alg' in key.jwk), `${what}: jwk has no alg`);
  assert.equal(Buffer.from(key.jwk.k, 'base64url').length, 32, `${what}: 256-bit k`);
  if (owner) assert.equal(key.userId, owner.userId, `${what}: key.userId is the creator`);
  if (key.createDate !== undefined) assert.ok(isRfc3339(key.createDate), `${what}: createDate RFC 3339`);
}

const kBytes = (key) => Buffer.from(key.jwk.k, 'base64url');

function assertSameKeyBytes(got, expected, what) {
  assert.ok(
    kBytes(got).equals(kBytes(expected)),
    `${what}: jwk.k must be byte-identical to the key handed out at creation`,
  );
}

// ================================================================ the suite

describe('node-kms 0.4.1 against strongroom dev', { concurrency: false }, () => {
  const creator = new User('creator');
  const member = new User('member');
  const outsider = new User('outsider');
  const extraUserId = randomUUID(); // authorized but never logs in
  let cluster;
  let key1, key2; // creator's keys; key1 bound at resource creation, key2 via update
  let resourceA;

  before(async () => {
    await startServer();
    cluster = String(server.info.kms_cluster).replace(/\/+$/, '');
  });

  after(async () => {
    await stopServer();
  });

  it('prints one JSON line with kms_url, kms_cluster, static_jwk, token_url', () => {
    const i = server.info;
    assert.match(i.kms_url, /^http:\/\/127\.0\.0\.1:\d+$/, 'kms_url');
    assert.match(i.kms_cluster, /^kms:\/\/[^/]+$/, 'kms_cluster is kms://<domain>');
    assert.match(i.token_url, /^http:\/\/127\.0\.0\.1:\d+\/dev\/token$/, 'token_url');
    assert.equal(typeof i.static_jwk, 'object');
  });

  it('static JWK: RSA >= 2048, no use, no alg, kid host == cluster host, x5c matches', () => {
    const jwk = server.info.static_jwk;
    assert.equal(jwk.kty, 'RSA');
    assert.ok(!('use' in jwk), 'static JWK must not carry use (node-kms then fails: "no key found")');
    assert.ok(!('alg' in jwk), 'static JWK must not carry alg (node-kms then fails: "no key found")');
    assert.ok(!('d' in jwk) && !('p' in jwk) && !('q' in jwk), 'static JWK must be public only');
    assert.match(jwk.kid, /^kms:\/\/[^/]+\//, 'kid is a kms: URI');
    const host = hostOf(cluster);
    assert.equal(hostOf(jwk.kid), host, 'kid host equals the kms_cluster host');
    assert.ok(unsignedBytes(jwk.n).length * 8 >= 2048, 'modulus >= 2048 bits');

    assert.ok(Array.isArray(jwk.x5c) && jwk.x5c.length >= 1, 'x5c present');
    const cert = new X509Certificate(Buffer.from(jwk.x5c[0], 'base64'));
    const certJwk = cert.publicKey.export({ format: 'jwk' });
    assert.equal(certJwk.kty, 'RSA', 'x5c[0] is an RSA certificate');
    assert.ok(unsignedBytes(certJwk.n).equals(unsignedBytes(jwk.n)), "x5c[0]'s modulus equals n");
    assert.ok(unsignedBytes(certJwk.e).equals(unsignedBytes(jwk.e)), "x5c[0]'s exponent equals e");
    const sans = (cert.subjectAltName || '').split(/,\s*/);
    assert.ok(sans.includes(`DNS:${host}`), `x5c[0] SAN (${cert.subjectAltName}) must contain DNS:${host}`);
    assert.ok(Date.parse(cert.validTo) > Date.now(), `x5c[0] must not be expired (validTo ${cert.validTo})`);
  });

  it('discovery GET /kms/<userId> returns the cluster and the same static JWK', async () => {
    const r = await fetch(`${server.info.kms_url}/kms/${creator.userId}`);
    const text = await r.text();
    assert.equal(r.status, 200, `GET /kms/<userId> -> ${r.status}: ${text}`);
    const body = JSON.parse(text);
    assert.equal(body.kmsCluster, server.info.kms_cluster);
    assert.equal(typeof body.rsaPublicKey, 'string', 'rsaPublicKey is a JSON *string* (Webex JSON.parses it)');
    assert.deepEqual(JSON.parse(body.rsaPublicKey), server.info.static_jwk);
  });

  it('mints KMS tokens for creator, member, outsider', async () => {
    for (const u of [creator, member, outsider]) u.bearer = await mintToken(u.userId, u.clientId);
    assert.notEqual(creator.bearer, member.bearer);
  });

  it('handshake: creator sends the private d too (as node-kms own test does); server ignores it', async (t) => {
    await creator.establish({ sendPrivate: true });
    t.diagnostic(`handshake reply JWS header: ${JSON.stringify(creator.handshakeHeader)}`);
    const x = await creator.send('update', '/ping');
    expectStatus(x, 200, 'ping right after a d-carrying handshake:');
  });

  it('handshake: member and outsider send only the public key (as Webex does)', async () => {
    await member.establish({ sendPrivate: false });
    await outsider.establish({ sendPrivate: false });
  });

  it('update /ping -> 200 (requestId echoed)', async () => {
    for (const u of [creator, member, outsider]) {
      const x = await u.send('update', '/ping');
      expectStatus(x, 200, `${u.name} ping:`);
      expectRequestIdEcho(x);
    }
  });

  it('create /keys count=2 -> 201 with two fresh 256-bit oct keys', async () => {
    const x = await creator.send('create', '/keys', { count: 2 });
    expectStatus(x, 201, 'create /keys:');
    expectRequestIdEcho(x);
    assert.ok(Array.isArray(x.body.keys), `keys array\n${describeX(x)}`);
    assert.equal(x.body.keys.length, 2, 'count=2 gives two keys');
    for (const k of x.body.keys) {
      checkKeyObject(k, { owner: creator, cluster, what: 'created key' });
      assert.ok(!k.resourceUri, 'a fresh key is unbound (no resourceUri)');
      assert.ok(!k.bindDate, 'a fresh key is unbound (no bindDate)');
      // Webex turns each jwk into a node-jose key
      const jk = await jose.JWK.asKey(k.jwk);
      assert.equal(jk.kty, 'oct');
      assert.equal(jk.length, 256);
    }
    [key1, key2] = x.body.keys;
    assert.notEqual(key1.uri, key2.uri, 'distinct uris');
    assert.ok(!kBytes(key1).equals(kBytes(key2)), 'distinct key material');
  });

  it('retrieve unbound key: creator 200 (same bytes); member and outsider 403', async () => {
    const c = await creator.send('retrieve', key1.uri);
    expectStatus(c, 200, 'creator retrieves own unbound key:');
    expectRequestIdEcho(c);
    checkKeyObject(c.body.key, { owner: creator, cluster, what: 'retrieved key' });
    assert.equal(c.body.key.uri, key1.uri);
    assertSameKeyBytes(c.body.key, key1, 'creator retrieve');

    for (const u of [member, outsider]) {
      const x = await u.send('retrieve', key1.uri);
      expectStatus(x, 403, `${u.name} retrieves someone else's unbound key:`);
      expectRequestIdEcho(x);
      assertNoKeyMaterial(x);
    }
  });

  it('uri may be relative or absolute: retrieve /keys/<uuid> gives the same key', async () => {
    const rel = key1.uri.slice(cluster.length); // "/keys/<uuid>"
    assert.match(rel, /^\/keys\//);
    const x = await creator.send('retrieve', rel);
    expectStatus(x, 200, 'retrieve by relative uri:');
    assert.equal(x.body.key.uri, key1.uri, 'the answer names the absolute uri');
    assertSameKeyBytes(x.body.key, key1, 'relative retrieve');
  });

  it('several messages in one POST are answered in request order', async () => {
    const ctx = creator.ctx;
    const reqs = [new KMS.Request({ method: 'retrieve', uri: key2.uri }), new KMS.Request({ method: 'retrieve', uri: key1.uri }), new KMS.Request({ method: 'update', uri: '/ping' })];
    const wrapped = [];
    for (const r of reqs) wrapped.push(await r.wrap(ctx));
    const replies = await postMessages(wrapped);
    const xs = [];
    for (let i = 0; i < reqs.length; i += 1) xs.push(await unwrapReply(ctx, reqs[i].body, wrapped[i], replies[i]));
    for (const x of xs) expectRequestIdEcho(x);
    expectStatus(xs[0], 200);
    expectStatus(xs[1], 200);
    expectStatus(xs[2], 200);
    assert.equal(xs[0].body.key.uri, key2.uri);
    assert.equal(xs[1].body.key.uri, key1.uri);
  });

  it('create /resources with userIds [member], keyUris [key1] -> 201; key1 bound; creator authorized', async () => {
    const x = await creator.send('create', '/resources', { userIds: [member.userId], keyUris: [key1.uri] });
    expectStatus(x, 201, 'create /resources:');
    expectRequestIdEcho(x);
    resourceA = x.body.resource;
    assert.ok(resourceA, `resource in reply\n${describeX(x)}`);
    const esc = cluster.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    assert.match(resourceA.uri, new RegExp(`^${esc}/resources/${UUID_RE}$`), 'resource uri');
    assert.ok(Array.isArray(resourceA.keyUris) && resourceA.keyUris.includes(key1.uri), 'keyUris contains key1');
    assert.ok(!resourceA.keyUris.includes(key2.uri), 'key2 not bound yet');
    if (resourceA.authorizationUris !== undefined) {
      assert.ok(Array.isArray(resourceA.authorizationUris), 'authorizationUris is an array');
      assert.equal(resourceA.authorizationUris.length, 2, 'creator + member');
    }

    const k = await creator.send('retrieve', key1.uri);
    expectStatus(k, 200, 'retrieve key1 after resource creation:');
    assert.equal(k.body.key.resourceUri, resourceA.uri, 'keyUris given at creation are bound');
    assert.ok(isRfc3339(k.body.key.bindDate), `bindDate RFC 3339: ${k.body.key.bindDate}`);
    assertSameKeyBytes(k.body.key, key1, 'key1 after binding');
  });

  it('member cannot yet retrieve the still-unbound key2 (403)', async () => {
    const x = await member.send('retrieve', key2.uri);
    expectStatus(x, 403, 'member retrieves unbound key2:');
    assertNoKeyMaterial(x);
  });

  it('update key2 with resourceUri (bind) -> 200 key with resourceUri and bindDate', async () => {
    const x = await creator.send('update', key2.uri, { resourceUri: resourceA.uri });
    expectStatus(x, 200, 'bind key2:');
    expectRequestIdEcho(x);
    const k = x.body.key;
    assert.ok(k, `key in reply\n${describeX(x)}`);
    assert.equal(k.uri, key2.uri);
    assert.equal(k.resourceUri, resourceA.uri, 'resourceUri set');
    assert.ok(isRfc3339(k.bindDate), `bindDate RFC 3339: ${k.bindDate}`);
    if (k.jwk) assertSameKeyBytes(k, key2, 'bind reply');
  });

  it('retrieve resource, <resource>/keys and <resource>/authorizations', async () => {
    const r = await creator.send('retrieve', resourceA.uri);
    expectStatus(r, 200, 'retrieve resource:');
    assert.equal(r.body.resource.uri, resourceA.uri);
    assert.deepEqual([...r.body.resource.keyUris].sort(), [key1.uri, key2.uri].sort(), 'resource keyUris = key1, key2');

    const ks = await creator.send('retrieve', `${resourceA.uri}/keys`);
    expectStatus(ks, 200, 'retrieve <resource>/keys:');
    assert.ok(Array.isArray(ks.body.keys), `keys array\n${describeX(ks)}`);
    const byUri = new Map(ks.body.keys.map((k) => [k.uri, k]));
    assert.equal(byUri.size, 2, 'two keys bound');
    for (const orig of [key1, key2]) {
      const k = byUri.get(orig.uri);
      assert.ok(k, `${orig.uri} listed`);
      checkKeyObject(k, { owner: creator, cluster, what: 'resource key' });
      assertSameKeyBytes(k, orig, 'resource/keys');
      assert.equal(k.resourceUri, resourceA.uri);
    }

    const as = await creator.send('retrieve', `${resourceA.uri}/authorizations`);
    expectStatus(as, 200, 'retrieve <resource>/authorizations:');
    assert.ok(Array.isArray(as.body.authorizations), `authorizations array\n${describeX(as)}`);
    assert.deepEqual(
      as.body.authorizations.map((a) => a.authId).sort(),
      [creator.userId, member.userId].sort(),
      'creator (automatically) and member are authorized',
    );
    for (const a of as.body.authorizations) {
      assert.equal(a.resourceUri, resourceA.uri);
      assert.equal(typeof a.uri, 'string');
    }
  });

  it('member retrieves bound keys (200, byte-identical); outsider 403 with an authorization reason', async () => {
    for (const orig of [key1, key2]) {
      const x = await member.send('retrieve', orig.uri);
      expectStatus(x, 200, `member retrieves ${orig === key1 ? 'key1' : 'key2'}:`);
      checkKeyObject(x.body.key, { owner: creator, cluster, what: 'member-retrieved key' });
      assertSameKeyBytes(x.body.key, orig, 'member retrieve');
    }
    const r = await member.send('retrieve', resourceA.uri);
    expectStatus(r, 200, 'member retrieves the resource:');

    const o = await outsider.send('retrieve', key1.uri);
    expectStatus(o, 403, 'outsider retrieves bound key1:');
    expectRequestIdEcho(o);
    assertNoKeyMaterial(o);
    assert.match(o.body.reason || '', /authoriz/i, 'reason mentions authorization');
    const or = await outsider.send('retrieve', resourceA.uri);
    expectStatus(or, 403, 'outsider retrieves the resource:');
  });

  it('create /authorizations adds outsider (+ an extra id, with a duplicate); remove again', async () => {
    const x = await creator.send('create', '/authorizations', {
      resourceUri: resourceA.uri,
      userIds: [outsider.userId, extraUserId, outsider.userId],
    });
    expectStatus(x, 201, 'create /authorizations:');
    expectRequestIdEcho(x);
    const auths = x.body.authorizations;
    assert.ok(Array.isArray(auths), `authorizations array\n${describeX(x)}`);
    // request order, duplicates merged (one authorization per id)
    const firstSeen = [];
    const uriOf = new Map();
    for (const a of auths) {
      assert.equal(a.resourceUri, resourceA.uri);
      if (uriOf.has(a.authId)) {
        assert.equal(uriOf.get(a.authId), a.uri, `duplicate id ${a.authId} must be merged, not authorized twice\n${describeX(x)}`);
      } else {
        uriOf.set(a.authId, a.uri);
        firstSeen.push(a.authId);
      }
    }
    assert.deepEqual(firstSeen, [outsider.userId, extraUserId], `authorizations in request order\n${describeX(x)}`);

    const list = await creator.send('retrieve', `${resourceA.uri}/authorizations`);
    expectStatus(list, 200);
    const ids = list.body.authorizations.map((a) => a.authId);
    assert.deepEqual([...ids].sort(), [creator.userId, member.userId, outsider.userId, extraUserId].sort(), 'stored authorizations, no duplicates');

    const o = await outsider.send('retrieve', key1.uri);
    expectStatus(o, 200, 'outsider after being authorized:');
    assertSameKeyBytes(o.body.key, key1, 'outsider retrieve');

    const d = await creator.send('delete', `${resourceA.uri}/authorizations?authId=${encodeURIComponent(outsider.userId)}`);
    expectStatus(d, 200, 'delete authorization:');
    expectRequestIdEcho(d);
    assert.ok(Array.isArray(d.body.authorizations), `delete answers an authorizations ARRAY\n${describeX(d)}`);
    assert.equal(d.body.authorizations.length, 1, 'exactly the removed authorization');
    assert.equal(d.body.authorizations[0].authId, outsider.userId);
    assert.equal(d.body.authorizations[0].resourceUri, resourceA.uri);

    for (const k of [key1, key2]) {
      const o2 = await outsider.send('retrieve', k.uri);
      expectStatus(o2, 403, 'outsider after removal:');
      assertNoKeyMaterial(o2);
    }
    const list2 = await creator.send('retrieve', `${resourceA.uri}/authorizations`);
    expectStatus(list2, 200);
    assert.ok(!list2.body.authorizations.some((a) => a.authId === outsider.userId), 'outsider no longer listed');
  });

  it('an authId may be a resource URI: everyone of resource B becomes authorized on A', async () => {
    // outsider makes resource B (creator is a member of B as well)
    const ok = await outsider.send('create', '/keys', { count: 1 });
    expectStatus(ok, 201, 'outsider create /keys:');
    const keyB = ok.body.keys[0];
    const rb = await outsider.send('create', '/resources', { userIds: [creator.userId], keyUris: [keyB.uri] });
    expectStatus(rb, 201, 'outsider create resource B:');
    const resourceB = rb.body.resource;

    const pre = await outsider.send('retrieve', key1.uri);
    expectStatus(pre, 403, 'outsider before B is authorized on A:');

    // Webex passes the resource URI in userIds (teams: general conversation KRO)
    const add = await creator.send('create', '/authorizations', { resourceUri: resourceA.uri, userIds: [resourceB.uri] });
    expectStatus(add, 201, 'authorize resource B on A:');
    assert.equal(add.body.authorizations.length, 1);
    assert.equal(add.body.authorizations[0].authId, resourceB.uri);

    const o = await outsider.send('retrieve', key1.uri);
    expectStatus(o, 200, 'outsider (member of B) retrieves A key1:');
    assertSameKeyBytes(o.body.key, key1, 'via resource B');

    // the grant is one-way: authorizing B on A does not authorize A's members on B
    const m = await member.send('retrieve', keyB.uri);
    expectStatus(m, 403, 'member of A is not thereby authorized on B:');
    assertNoKeyMaterial(m);

    const del = await creator.send('delete', `${resourceA.uri}/authorizations?authId=${encodeURIComponent(resourceB.uri)}`);
    expectStatus(del, 200, 'remove resource B from A:');
    assert.equal(del.body.authorizations[0].authId, resourceB.uri);
    const post = await outsider.send('retrieve', key1.uri);
    expectStatus(post, 403, 'outsider after B removed from A:');
    assertNoKeyMaterial(post);
  });

  it('unknown key uri -> 404; unknown method -> 400', async () => {
    const nf = await creator.send('retrieve', `${cluster}/keys/${randomUUID()}`);
    expectStatus(nf, 404, 'retrieve unknown key:');
    expectRequestIdEcho(nf);
    assertNoKeyMaterial(nf);

    const bad = await creator.send('frobnicate', '/keys', { count: 1 });
    expectStatus(bad, 400, 'unknown method:');
    expectRequestIdEcho(bad);
    assertNoKeyMaterial(bad);
  });

  it('token of user A with credential.userId B is refused (on a channel)', async (t) => {
    // outsider's token + channel, but the envelope claims to be the creator,
    // asking for a key only the creator may read (an unbound creator key).
    const fresh = await creator.send('create', '/keys', { count: 1 });
    expectStatus(fresh, 201);
    const onlyCreator = fresh.body.keys[0];

    const saved = outsider.ctx.clientInfo;
    outsider.ctx.clientInfo = { clientId: outsider.clientId, credential: { userId: creator.userId, bearer: outsider.bearer } };
    let x;
    try {
      x = await outsider.send('retrieve', onlyCreator.uri, {}, { expectChannelReply: false });
    } finally {
      outsider.ctx.clientInfo = saved;
    }
    expectStatus(x, [401, 403], 'token/userId mismatch:');
    assertNoKeyMaterial(x);
    t.diagnostic(`mismatch on channel: ${x.kind} status ${x.status} reason ${JSON.stringify(x.body.reason)}`);
  });

  it('token of user A with credential.userId B is refused (in the handshake)', async (t) => {
    const ctx = outsider.newContext({ userId: creator.userId, bearer: outsider.bearer });
    const { x } = await outsider.handshake({ ctx });
    expectStatus(x, [401, 403], 'handshake with token/userId mismatch:');
    assert.equal(x.kind, 'JWS', 'pre-channel error is a JWS');
    assert.ok(!x.body.key, 'no ephemeral key handed out');
    t.diagnostic(`mismatch in handshake: ${x.kind} status ${x.status} reason ${JSON.stringify(x.body.reason)}`);
  });

  it('handshake with a garbage bearer -> JWS error signed by the static key, verified by node-kms', async (t) => {
    const ctx = member.newContext({ bearer: 'garbage.garbage.garbage' });
    const { x } = await member.handshake({ ctx });
    assert.equal(x.kind, 'JWS', `pre-channel error must be a JWS\n${describeX(x)}`);
    // node-kms verified it (unwrap succeeded) ...
    expectStatus(x, 401, 'handshake with garbage bearer:');
    expectRequestIdEcho(x);
    assert.ok(!x.body.key, 'no ephemeral key handed out');
    assert.equal(x.header.kid, server.info.static_jwk.kid, 'JWS kid is the static kid');
    t.diagnostic(`garbage bearer: header ${JSON.stringify(x.header)} body ${JSON.stringify(x.body)}`);
    // ... and it really is the static key's signature: node crypto agrees, and
    // node-kms refuses the same reply once the payload is touched
    assert.ok(verifyJwsIndependently(x.reply, server.info.static_jwk), 'static-key signature (node crypto)');
    const [h, , s] = x.reply.split('.');
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...x.body, status: 201 })).toString('base64url')}.${s}`;
    await assert.rejects(new KMS.Response(forged).unwrap(ctx), 'tampered JWS must not verify');
  });

  it('delete the ecdhe channel -> 204; the channel is then refused; other channels unaffected', async (t) => {
    const spare = new User('spare');
    spare.userId = creator.userId;
    spare.clientId = `${creator.clientId}-2`;
    spare.bearer = await mintToken(spare.userId, spare.clientId);
    const ctx = await spare.establish({ sendPrivate: false });
    const uri = ctx.ephemeralKey.uri;

    const works = await spare.send('retrieve', key1.uri);
    expectStatus(works, 200, 'spare channel works before delete:');

    const d = await spare.send('delete', uri, {}, { expectChannelReply: false });
    expectStatus(d, 204, 'delete ecdhe:');
    expectRequestIdEcho(d);

    t.diagnostic(`delete ecdhe reply: ${d.kind} header ${JSON.stringify(d.header)} body ${JSON.stringify(d.body)}`);
    const post = await spare.send('retrieve', key1.uri, {}, { expectChannelReply: false });
    t.diagnostic(
      `message on deleted channel: ${post.kind} header ${JSON.stringify(post.header)} ` +
        (post.unwrapError ? `unwrap failed: ${post.unwrapError.message}` : `body ${JSON.stringify(post.body)}`),
    );
    if (post.unwrapError) {
      // the client could not even read the answer: it certainly got no key
      assert.ok(true);
    } else {
      assert.ok(
        !(post.status >= 200 && post.status < 300),
        `a message on a deleted channel must be refused\n${describeX(post)}`,
      );
      assertNoKeyMaterial(post);
    }

    const still = await creator.send('retrieve', key1.uri);
    expectStatus(still, 200, "creator's other channel after deleting the spare one:");
    assertSameKeyBytes(still.body.key, key1, 'other channel');
  });

  it('stdout carried exactly one line', () => {
    assert.deepEqual(server.extraStdout, [], 'logs belong on stderr; stdout is the single JSON line');
  });
});
