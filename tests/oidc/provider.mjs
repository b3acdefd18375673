// A real OpenID provider (the `oidc-provider` package) on loopback, for tests/all/oidc.rs.
//
//   node provider.mjs keygen KID > key.json          a private RS256 key, as a JWK
//   node provider.mjs serve PORT key.json [old.json]  the first key signs; all are published
//
// Users (any password on the dev login form): alice (developers), bob (reviewers),
// carol (auditors), dave (no group). Clients: `sluice-cli` (public, native: the code flow with
// PKCE on a loopback redirect, the device flow, refresh tokens); `sluice-console` (public web
// client for the gateway's console, redirect URI from $CONSOLE_REDIRECT); `ci-bot` (client credentials, secret
// `ci-bot-secret`, group `ci`). Access tokens for the resource `urn:sluice:gateway` are JWTs
// (RFC 9068) with audience `sluice-gateway`.
//
// For the tests only: POST /test/mint with {"header": {...}, "claims": {...}} returns a JWT
// signed with the signing key (or, for header.alg "HS256", HMAC'd with the public key's PEM:
// the classic key-confusion attack), so tests can present tokens no honest provider issues.

import { readFileSync } from 'node:fs';
import { createPublicKey } from 'node:crypto';
import Provider from 'oidc-provider';
import { SignJWT, exportJWK, generateKeyPair, importJWK } from 'jose';

const [mode, ...args] = process.argv.slice(2);

if (mode === 'keygen') {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  process.stdout.write(JSON.stringify({ ...jwk, kid: args[0], alg: 'RS256', use: 'sig' }));
  process.exit(0);
}

const [port, ...keyFiles] = args;
const keys = keyFiles.map((f) => JSON.parse(readFileSync(f, 'utf8')));
const issuer = `http://127.0.0.1:${port}`;
const groups = { alice: ['developers'], bob: ['reviewers'], carol: ['auditors'], dave: [] };
const clientGroups = { 'ci-bot': ['ci'] };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'sluice-cli',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
    },
    // The gateway's web console: a public web client (PKCE), redirecting to the gateway
    // the test started (CONSOLE_REDIRECT).
    {
      client_id: 'sluice-console',
      application_type: 'web',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: process.env.CONSOLE_REDIRECT ? [process.env.CONSOLE_REDIRECT] : [],
    },
    {
      client_id: 'ci-bot',
      client_secret: 'ci-bot-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
  ],
  jwks: { keys },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.com`, groups: groups[id] ?? [] }),
  }),
  claims: { openid: ['sub'], email: ['email'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups', 'offline_access'],
  conformIdTokenClaims: false, // the ID token carries the scopes' claims (groups)
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:sluice:gateway',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'sluice',
        audience: 'sluice-gateway',
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (ctx, token) =>
    token.kind === 'ClientCredentials' ? { groups: clientGroups[token.clientId] ?? [] } : {},
  issueRefreshToken: async (ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  ttl: { IdToken: Number(process.env.ID_TOKEN_TTL ?? 3600), AccessToken: 3600, ClientCredentials: 600 },
});
provider.proxy = false;

const signing = keys[0];
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST' || ctx.path !== '/test/mint') return next();
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  const { header = {}, claims = {} } = JSON.parse(Buffer.concat(chunks).toString() || '{}');
  let key;
  if (header.alg === 'HS256') {
    const pem = createPublicKey({ key: signing, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
    key = new TextEncoder().encode(pem);
  } else {
    key = await importJWK(signing, 'RS256');
  }
  const now = Math.floor(Date.now() / 1000);
  ctx.body = await new SignJWT({ iss: issuer, iat: now, exp: now + 600, ...claims })
    .setProtectedHeader({ alg: 'RS256', kid: signing.kid, typ: 'JWT', ...header })
    .sign(key);
});

provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
