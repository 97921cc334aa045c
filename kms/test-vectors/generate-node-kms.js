// Regenerates node-kms-generated.json: JOSE objects made by the real npm client node-kms 0.4.1
// and node-jose 2.2.0 (the versions pinned in tests/node-kms/package-lock.json), for
// kms/tests/it/jose_vectors.rs.
//
//   cd tests/node-kms && npm ci && cd ../..
//   node kms/test-vectors/generate-node-kms.js > kms/test-vectors/node-kms-generated.json
//
// Every run makes a new RSA key, new IVs and new CEKs, so the output differs from run to run;
// the committed file is one run. Before printing, each object is decrypted or verified again
// with node-jose, so a fixture that node-jose itself rejects is never written.
"use strict";

const path = require("path");
const crypto = require("crypto");
const { createRequire } = require("module");

const nodeRequire = createRequire(
  path.join(__dirname, "..", "..", "tests", "node-kms", "package.json"),
);
const jose = nodeRequire("node-jose");
const KMS = nodeRequire("node-kms");

const expect = (cond, what) => {
  if (!cond) {
    throw new Error(`self-check failed: ${what}`);
  }
};

// node-kms's own test fixtures (test/config.js and test/context-test.js of cisco/node-kms):
// the client, and the client ECDH key whose agreement with the server key below gives
// k = II4BqHTDSRBKp0QoMYXORF75-1xud9i5_BkZeXaAS3s.
const clientInfo = {
  clientId: "tester-web_e1fa9c13-108e-4fd0-a793-00f2644e6ad0",
  credential: {
    userId: "414baf5d-649b-4b4d-9a5a-0eec960c3db2",
    bearer: "IOAO1WboYGJLDb6W-sU7YQ.54k0eIaQDLYOr8uD9ZuEDeKzLRQnkAopV7vsQ0dOrv0",
  },
};
const clientEcdhKey = {
  uri: "-internal/c3370144-5b1e-40c3-a4ef-21ff63f85dd5",
  jwk: {
    kid: "c3370144-5b1e-40c3-a4ef-21ff63f85dd5",
    kty: "EC",
    crv: "P-256",
    x: "jzs-vcNXzSPAtCmgchsQ2uqYcky43XokijoyTC6-FX0",
    y: "QM4cPEYv0xS1oWtg19i0xjvn3nhY3rU9cklDfc1GR6M",
    d: "WhCpx09Cb8Ge5j07D4rVx_kPl7TyApHnnZuRX7eGsEc",
  },
};
const serverEcdhKey = {
  uri: "kms://kms.example/ecdhe/5d9a92dd-b22d-4bcf-bacb-72775cea11c7",
  jwk: {
    kid: "5d9a92dd-b22d-4bcf-bacb-72775cea11c7",
    kty: "EC",
    crv: "P-256",
    x: "eyDfB_DWmIcKjkLvBZUx-Z7W436DaikKQDpOCt7rFYQ",
    y: "icbVIugK8rnSXRVERLRvoWZu1s4dzivMJa70pEYG6Fs",
  },
  createDate: "2014-10-09T15:54:48Z",
  expirationDate: "2014-10-09T16:54:48Z",
};

function newContext(serverPublicJwk) {
  const ctx = new KMS.Context();
  ctx.clientInfo = clientInfo;
  ctx.serverInfo = { key: serverPublicJwk };
  return ctx;
}

async function decrypts(jwk, compact, plaintext) {
  const key = await jose.JWK.asKey(jwk);
  const out = await jose.JWE.createDecrypt(key).decrypt(compact);
  return out.plaintext.toString("utf8") === plaintext;
}

async function signs(alg, jwk, payload) {
  const key = await jose.JWK.asKey(jwk);
  const compact = await jose.JWS.createSign(
    { compact: true, fields: { alg, kid: jwk.kid } },
    { key, reference: false },
  ).final(Buffer.from(payload, "utf8"));
  const verified = await jose.JWS.createVerify(key).verify(compact);
  expect(verified.payload.toString("utf8") === payload, `${alg} self-verify`);
  return compact;
}

async function main() {
  // (b)/(c): a fixed RSA key for this file, private part included so the Rust test can do the
  // HSM's job in software. No "use"/"alg" so node-jose picks its default (RSA-OAEP).
  const { privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
  const rsaPrivate = { kid: "kms://kms.example/keys/static", ...privateKey.export({ format: "jwk" }) };
  const rsaPublic = { kty: "RSA", kid: rsaPrivate.kid, n: rsaPrivate.n, e: rsaPrivate.e };

  // (a1) dir + A256GCM under node-kms's test sharedKey (test/config.js).
  const sharedKey = {
    uri: "/ecdhe/a4752411-dd5f-483c-8d93-e8221f6ab4a6",
    jwk: {
      kty: "oct",
      kid: "/ecdhe/a4752411-dd5f-483c-8d93-e8221f6ab4a6",
      alg: "A256GCM",
      k: "B8L7seJG2lX1-dx377Ys6ZBXulEntd3amXjWYy1e00M",
    },
  };
  const ctxShared = newContext(rsaPublic);
  ctxShared.ephemeralKey = sharedKey;
  const reqShared = new KMS.Request({
    requestId: "0b9d6a8c-3d4e-4a52-9a4f-6f0e0f7b1a01",
    method: "create",
    uri: "/keys",
    count: 10,
  });
  const dirShared = await reqShared.wrap(ctxShared, { serverKey: false });
  const dirSharedPlain = JSON.stringify(reqShared.body);
  expect(await decrypts(sharedKey.jwk, dirShared, dirSharedPlain), "dir (sharedKey)");

  // (a2) dir + A256GCM under the key node-kms itself derives (ECDH + HKDF) from the
  // context-test.js key pair: the full client side of the handshake.
  const ctxDerived = newContext(rsaPublic);
  ctxDerived.ephemeralKey = clientEcdhKey;
  const derived = await ctxDerived.deriveEphemeralKey(serverEcdhKey);
  expect(derived.jwk.k === "II4BqHTDSRBKp0QoMYXORF75-1xud9i5_BkZeXaAS3s", "ECDH-HKDF k");
  ctxDerived.ephemeralKey = derived;
  const reqDerived = new KMS.Request({
    requestId: "0b9d6a8c-3d4e-4a52-9a4f-6f0e0f7b1a02",
    method: "retrieve",
    uri: "kms://kms.example/keys/4f2c8a3e-1b7d-4c59-8e6a-2d9f0b3c7e15",
  });
  const dirDerived = await reqDerived.wrap(ctxDerived, { serverKey: false });
  const dirDerivedPlain = JSON.stringify(reqDerived.body);
  expect(await decrypts(derived.jwk, dirDerived, dirDerivedPlain), "dir (derived)");

  // (b) the handshake request: RSA-OAEP + A256GCM to the server's static key.
  const ctxHandshake = newContext(rsaPublic);
  const reqHandshake = new KMS.Request({
    requestId: "0b9d6a8c-3d4e-4a52-9a4f-6f0e0f7b1a03",
    method: "create",
    uri: "/ecdhe",
    jwk: { kty: "EC", crv: "P-256", x: clientEcdhKey.jwk.x, y: clientEcdhKey.jwk.y },
  });
  const oaep = await reqHandshake.wrap(ctxHandshake, { serverKey: true });
  const oaepPlain = JSON.stringify(reqHandshake.body);
  expect(await decrypts(rsaPrivate, oaep, oaepPlain), "RSA-OAEP");

  // (c) node-jose signatures: the server's answer to the handshake (what a KMS signs), with
  // RS256 and PS256 under the RSA key, and ES256 under a fresh P-256 key.
  const response = JSON.stringify({
    status: 201,
    requestId: "0b9d6a8c-3d4e-4a52-9a4f-6f0e0f7b1a03",
    key: {
      uri: serverEcdhKey.uri,
      jwk: { kty: "EC", crv: "P-256", x: serverEcdhKey.jwk.x, y: serverEcdhKey.jwk.y },
      userId: clientInfo.credential.userId,
      clientId: clientInfo.clientId,
      createDate: serverEcdhKey.createDate,
      expirationDate: serverEcdhKey.expirationDate,
    },
  });
  const rs256 = await signs("RS256", rsaPrivate, response);
  const ps256 = await signs("PS256", rsaPrivate, response);
  const ecGenerated = await jose.JWK.createKeyStore().generate("EC", "P-256");
  const ecPrivate = { ...ecGenerated.toJSON(true), kid: "kms://kms.example/keys/es256" };
  const ecPublic = { kty: "EC", kid: ecPrivate.kid, crv: ecPrivate.crv, x: ecPrivate.x, y: ecPrivate.y };
  const es256 = await signs("ES256", ecPrivate, response);

  const out = {
    about:
      "Generated by kms/test-vectors/generate-node-kms.js with node-kms 0.4.1 and node-jose 2.2.0 " +
      `on Node.js ${process.version}; every object was decrypted/verified by node-jose before being written.`,
    rsa_private_jwk: rsaPrivate,
    ec_public_jwk: ecPublic,
    dir_shared_key: {
      what: "KMS.Request#wrap({serverKey:false}) under node-kms test/config.js sharedKey",
      key: sharedKey.jwk.k,
      jwe: dirShared,
      plaintext: dirSharedPlain,
    },
    dir_derived_key: {
      what: "KMS.Request#wrap({serverKey:false}) under the key KMS.Context#deriveEphemeralKey derived (context-test.js pair)",
      key: derived.jwk.k,
      jwe: dirDerived,
      plaintext: dirDerivedPlain,
    },
    rsa_oaep_handshake: {
      what: "KMS.Request#wrap({serverKey:true}) to rsa_private_jwk's public part",
      jwe: oaep,
      plaintext: oaepPlain,
    },
    jws: {
      what: "node-jose JWS.createSign compact, fields {alg, kid}",
      payload: response,
      rs256,
      ps256,
      es256,
    },
  };
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
