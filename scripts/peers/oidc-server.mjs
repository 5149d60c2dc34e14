// A real OpenID Connect provider (npm oidc-provider 9) for SARK's tests.
//
// Env: OIDC_PORT; OIDC_REDIRECT_URIS (comma-separated redirect URIs every client accepts).
// Issuer http://127.0.0.1:$OIDC_PORT. Clients sark-web/sark-web-secret and
// sark-other/sark-other-secret (authorization code + PKCE). Users test.user/testpass
// (groups sark-admins) and plain.user/plainpass (groups staff).
//
// One test hook, for the token-substitution attack: POST /test/substitute-id-token with
// an ID token as the body makes the next token response whose own ID token has the same
// nonce carry that token instead (as a compromised network path would). Keyed by nonce,
// so concurrent logins of other tests are never touched.
import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const PORT = Number(process.env.OIDC_PORT || 59000);
const ISSUER = `http://127.0.0.1:${PORT}`;
const REDIRECTS = (process.env.OIDC_REDIRECT_URIS || 'http://127.0.0.1:59999/cb').split(',');
const USERS = {
  'test.user': { password: 'testpass', email: 'test.user@example.org', groups: ['sark-admins'] },
  'plain.user': { password: 'plainpass', email: 'plain.user@example.org', groups: ['staff'] },
};

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'k1', use: 'sig', alg: 'RS256' };
const client = (id) => ({
  client_id: id, client_secret: `${id}-secret`, grant_types: ['authorization_code'],
  response_types: ['code'], redirect_uris: REDIRECTS, token_endpoint_auth_method: 'client_secret_basic',
});

const provider = new Provider(ISSUER, {
  jwks: { keys: [jwk] },
  clients: [client('sark-web'), client('sark-other')],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['preferred_username'], groups: ['groups'] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    if (!USERS[id]) return undefined;
    return { accountId: id, async claims() { return { sub: id, preferred_username: id, email: USERS[id].email, email_verified: true, groups: USERS[id].groups }; } };
  },
  // First-party clients: everything requested is granted, so there is no consent screen.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
    grant.addOIDCClaims(['email', 'email_verified', 'preferred_username', 'groups']);
    await grant.save();
    return grant;
  },
  conformIdTokenClaims: false,
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['test-cookie-key'] },
  ttl: { AccessToken: 300, AuthorizationCode: 60, IdToken: 300, Interaction: 600, Session: 3600, Grant: 3600 },
});

const substitutes = new Map();
const nonceOf = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString()).nonce;
const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  if (req.method === 'POST' && req.url === '/test/substitute-id-token') {
    let body = ''; for await (const c of req) body += c;
    substitutes.set(nonceOf(body.trim()), body.trim());
    res.writeHead(204); return res.end();
  }
  if (substitutes.size > 0 && req.method === 'POST' && req.url.startsWith('/token')) {
    const end = res.end.bind(res);
    res.end = (chunk, ...rest) => {
      try {
        const json = JSON.parse(chunk.toString());
        const nonce = json.id_token && nonceOf(json.id_token);
        if (substitutes.has(nonce)) {
          json.id_token = substitutes.get(nonce);
          substitutes.delete(nonce);
          chunk = JSON.stringify(json);
          if (!res.headersSent) res.setHeader('content-length', Buffer.byteLength(chunk));
        }
      } catch (e) { /* not a token response: pass it on */ }
      return end(chunk, ...rest);
    };
  }
  const m = req.url.match(/^\/interaction\/([\w-]+)$/);
  if (!m) return callback(req, res);
  try {
    await provider.interactionDetails(req, res);
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/html' });
      return res.end('<form method="post"><input name="username"><input name="password" type="password"><button>login</button></form>');
    }
    let body = ''; for await (const c of req) body += c;
    const p = new URLSearchParams(body);
    const u = USERS[p.get('username')];
    const result = (u && u.password === p.get('password'))
      ? { login: { accountId: p.get('username') } }
      : { error: 'access_denied', error_description: 'bad credentials' };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  } catch (e) { res.writeHead(400); res.end(String(e)); }
});
server.listen(PORT, '127.0.0.1', () => console.log(`oidc-provider listening on ${ISSUER}`));
