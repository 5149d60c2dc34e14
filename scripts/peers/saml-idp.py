"""A real SAML 2.0 IdP (PyPI pysaml2 with Debian's xmlsec1) for SARK's tests.

Env: SAML_PORT; SAML_DIR (holds idp.key/idp.crt, other.key/other.crt and sp.xml, the
metadata of the SP it trusts). Entity ID http://127.0.0.1:$SAML_PORT/idp/metadata.

  GET /idp/metadata                                   the IdP's metadata
  GET /sso/redirect?SAMLRequest=..&RelayState=..      SP-initiated login, HTTP-Redirect binding

Users authenticate with HTTP Basic (test.user/testpass, plain.user/plainpass); the answer
is the standard auto-posting form with a SAMLResponse whose Response and Assertion are both
signed (RSA-SHA256). Test hook: `variant=` on /sso/redirect makes a response a real IdP
could send in error or an attacker could replay:
  unsigned       nothing signed
  foreign_key    signed by a key the SP does not know
  expired        an assertion whose validity ended ten minutes ago
  audience       an assertion for another SP
  assertion_only only the Assertion signed
  response_only  only the Response signed
"""
import base64, copy, os, sys
from urllib.parse import parse_qs
from wsgiref.simple_server import make_server, WSGIRequestHandler

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.metadata import entity_descriptor
from saml2.saml import AUTHN_PASSWORD, NAME_FORMAT_URI, NAMEID_FORMAT_PERSISTENT, NameID
from saml2.server import Server

PORT = int(os.environ.get("SAML_PORT", "58080"))
DIR = os.environ["SAML_DIR"]
BASE = f"http://127.0.0.1:{PORT}"
USERS = {
    "test.user": {"password": "testpass", "identity": {
        "uid": ["test.user"], "mail": ["test.user@example.org"],
        "eduPersonAffiliation": ["member", "sark-admins"]}},
    "plain.user": {"password": "plainpass", "identity": {
        "uid": ["plain.user"], "mail": ["plain.user@example.org"],
        "eduPersonAffiliation": ["member"]}},
}
SHA256 = {"sign_alg": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
          "digest_alg": "http://www.w3.org/2001/04/xmlenc#sha256"}


def server(key, lifetime):
    conf = {
        "entityid": f"{BASE}/idp/metadata",
        "service": {"idp": {
            "name": "SARK test IdP",
            "endpoints": {"single_sign_on_service": [(f"{BASE}/sso/redirect", BINDING_HTTP_REDIRECT)]},
            "policy": {"default": {"lifetime": lifetime, "attribute_restrictions": None,
                                   "name_form": NAME_FORMAT_URI}},
            "name_id_format": [NAMEID_FORMAT_PERSISTENT],
            "sign_response": True, "sign_assertion": True,
            "want_authn_requests_signed": False,
        }},
        "key_file": os.path.join(DIR, f"{key}.key"), "cert_file": os.path.join(DIR, f"{key}.crt"),
        "xmlsec_binary": "/usr/bin/xmlsec1",
        "metadata": {"local": [os.path.join(DIR, "sp.xml")]},
        "attribute_map_dir": None,
    }
    cfg = IdPConfig().load(copy.deepcopy(conf))
    return Server(config=cfg), cfg


IDP, CFG = server("idp", {"minutes": 15})
FOREIGN, _ = server("other", {"minutes": 15})
EXPIRED, _ = server("idp", {"minutes": -10})
METADATA = str(entity_descriptor(CFG)).encode()


def check_basic(environ):
    h = environ.get("HTTP_AUTHORIZATION", "")
    if not h.startswith("Basic "):
        return None
    user, _, pw = base64.b64decode(h[6:]).decode().partition(":")
    u = USERS.get(user)
    return user if u and u["password"] == pw else None


def respond(user, sp_entity, acs, in_response_to, relay_state, variant):
    idp = {"foreign_key": FOREIGN, "expired": EXPIRED}.get(variant, IDP)
    audience = "urn:another:sp" if variant == "audience" else sp_entity
    resp = idp.create_authn_response(
        identity=USERS[user]["identity"], userid=user,
        name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text=user, sp_name_qualifier=audience),
        authn={"class_ref": AUTHN_PASSWORD, "authn_auth": BASE},
        in_response_to=in_response_to, destination=acs, sp_entity_id=audience,
        sign_response=variant not in ("unsigned", "assertion_only"),
        sign_assertion=variant not in ("unsigned", "response_only"),
        **SHA256)
    return IDP.apply_binding(BINDING_HTTP_POST, str(resp), acs, relay_state, response=True)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    q = parse_qs(environ.get("QUERY_STRING", ""))
    g = lambda k: q.get(k, [None])[0]
    try:
        if path == "/idp/metadata":
            start_response("200 OK", [("Content-Type", "application/samlmetadata+xml")])
            return [METADATA]
        if path == "/sso/redirect":
            user = check_basic(environ)
            if not user:
                start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="sark-idp"')])
                return [b"authentication required\n"]
            req = IDP.parse_authn_request(g("SAMLRequest"), BINDING_HTTP_REDIRECT)
            args = IDP.response_args(req.message, [BINDING_HTTP_POST])
            http_args = respond(user, args["sp_entity_id"], args["destination"],
                                args["in_response_to"], g("RelayState") or "", g("variant"))
            start_response("200 OK", [("Content-Type", "text/html")])
            return [http_args["data"].encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    except Exception as e:  # noqa: BLE001 - a test peer answers every failure with its cause
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [f"error: {e!r}\n".encode()]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *a):
        sys.stderr.write("%s\n" % (a[0] % a[1:]))


if __name__ == "__main__":
    with make_server("127.0.0.1", PORT, app, handler_class=QuietHandler) as s:
        print(f"SAML IdP on {BASE}", flush=True)
        s.serve_forever()
