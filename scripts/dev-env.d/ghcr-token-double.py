#!/usr/bin/env python3
"""ghcr-token-double: a test double of GHCR's token endpoint (https://ghcr.io/token).

Registry C of the dev world (CNCF distribution with `auth: token`) sends clients here with
`WWW-Authenticate: Bearer realm=".../token",service="...",scope="repository:NAME:pull,push"`.
Like GHCR, this service

  * answers `GET /token?service=S&scope=...` (scope may repeat, or hold several scopes separated
    by spaces) with `{"token", "access_token", "expires_in", "issued_at"}`;
  * checks HTTP basic credentials: `USER:TOKEN` for a known user, or `x-access-token:TOKEN`
    (the form GitHub Actions' GITHUB_TOKEN uses), where TOKEN is the user's token;
  * grants the intersection of what was asked and what the user holds: an action the user does
    not hold is dropped (so a pull-only user asking for `pull,push` gets a token for `pull`, and
    the registry then refuses the push), never an error, as the token spec says;
  * grants the source repository's `pull` for a cross-repository mount the same way (the client
    asks for `repository:SRC:pull` beside `repository:DST:pull,push`);
  * answers anonymous requests with a token that grants nothing (every repository here is
    private), wrong credentials with 401, and `POST /token` (OAuth2) with 404, the documented
    "not supported" answer on which clients (containerd, docker) fall back to GET.

The token is a JWT signed RS256 with a key whose certificate is the registry's `rootcertbundle`;
the certificate travels in the `x5c` header, which is how distribution 2.8 finds the key.

It is a test double, not a token server to deploy: users and grants come from a JSON file
written by scripts/dev-env, tokens live 300 s, and there is no refresh-token flow.
Standard library only (the signature is made by `openssl dgst`), so it needs no install step.
It never logs a credential or a token.
"""

import argparse
import base64
import datetime
import hmac
import json
import secrets
import ssl
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN_LIFETIME_S = 300
ANY = "*"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pem_to_der_b64(pem: str) -> str:
    """The base64 body of a PEM certificate is the standard base64 of its DER: what x5c holds."""
    lines = [l.strip() for l in pem.splitlines()]
    start = lines.index("-----BEGIN CERTIFICATE-----")
    end = lines.index("-----END CERTIFICATE-----")
    return "".join(lines[start + 1 : end])


def parse_scope(scope: str):
    """`repository:NAME:pull,push` -> ("repository", NAME, ["pull", "push"]); None if malformed.

    NAME may hold `/` but never `:`; the resource type may carry a class, `repository(plugin)`.
    """
    first, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not first or not name or not actions:
        return None
    rtype = first.split("(", 1)[0]
    return rtype, name, [a for a in actions.split(",") if a]


def name_matches(pattern: str, name: str) -> bool:
    """`*` matches every name, `acme/*` every name under `acme/`, anything else itself."""
    if pattern == ANY:
        return True
    if pattern.endswith("/*"):
        return name.startswith(pattern[:-1])
    return pattern == name


class Users:
    def __init__(self, path: str):
        with open(path, encoding="utf-8") as f:
            self.users = json.load(f)["users"]

    def authenticate(self, user: str, token: str):
        """The user record for these basic credentials, or None. Constant-time comparisons."""
        found = None
        for u in self.users:
            token_ok = hmac.compare_digest(u["token"].encode(), token.encode())
            if token_ok and (user == "x-access-token" or hmac.compare_digest(u["name"].encode(), user.encode())):
                found = u
        return found

    @staticmethod
    def grant(user, rtype: str, name: str, wanted):
        """The subset of `wanted` actions that `user` holds on `rtype:name`."""
        held = set()
        for g in user["grants"] if user else []:
            if g["type"] == rtype and name_matches(g["name"], name):
                held.update(g["actions"])
        if ANY in held:
            return list(wanted)
        return [a for a in wanted if a in held]


class Signer:
    def __init__(self, key: str, cert: str):
        self.key = key
        with open(cert, encoding="ascii") as f:
            self.x5c = [pem_to_der_b64(f.read())]

    def sign(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        signing_input = b64url(json.dumps(header, separators=(",", ":")).encode()) + "." + b64url(
            json.dumps(claims, separators=(",", ":")).encode()
        )
        # RSASSA-PKCS1-v1_5 with SHA-256 (JWS "RS256") is exactly what `openssl dgst -sign` makes
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.key],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return signing_input + "." + b64url(sig)


class Handler(BaseHTTPRequestHandler):
    server_version = "ghcr-token-double"
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle or silent connection must not hold a thread forever

    def setup(self):
        # the TLS handshake runs here, in the connection's own thread, not in accept(): a client
        # that connects and says nothing must not stall every other client
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def log_message(self, fmt, *args):  # the default logs to stderr too; keep one format
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    def reply(self, code: int, body: dict, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, code: int, err: str, message: str, headers=()):
        self.reply(code, {"errors": [{"code": err, "message": message}]}, headers)

    def send_error(self, code, message=None, explain=None):
        # http.server's own error page quotes the request line, which for a request it could not
        # parse may be a form body holding a password: answer without echoing anything
        self.close_connection = True
        self.reply(code, {"errors": [{"code": "UNSUPPORTED", "message": "bad or unsupported request"}]},
                   [("Connection", "close")])

    def log_error(self, fmt, *args):
        # (the default quotes what it could not parse: see send_error)
        sys.stderr.write("%s error answering %s\n" % (self.log_date_time_string(), self.address_string()))

    def credentials(self):
        """(user, token) from `Authorization: Basic`, None without one, False when malformed."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        kind, _, value = auth.partition(" ")
        if kind.lower() != "basic":
            return False
        try:
            user, sep, token = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (user, token) if sep else False

    def do_POST(self):
        # OAuth2 POST is optional in the token spec; 404 is its documented "not implemented".
        # The form body (it holds the password) is read and dropped unseen: left in the stream,
        # it would be parsed as the next request on this keep-alive connection.
        try:
            length = min(int(self.headers.get("Content-Length", "0")), 1 << 20)
        except ValueError:
            length = 0
        if length > 0:
            self.rfile.read(length)
        self.close_connection = True
        self.error(404, "NOT_FOUND", "POST /token is not supported: use GET with basic credentials",
                   [("Connection", "close")])

    def do_GET(self):
        cfg = self.server.cfg
        url = urlsplit(self.path)
        if url.path != "/token":
            return self.error(404, "NOT_FOUND", "only /token lives here")
        query = parse_qs(url.query)
        service = query.get("service", [""])[0]
        if service != cfg.service:
            return self.error(400, "UNSUPPORTED", "unknown service %r (this issuer serves %r)" % (service, cfg.service))
        creds = self.credentials()
        challenge = [("WWW-Authenticate", 'Basic realm="%s"' % cfg.service)]
        if creds is False:
            return self.error(401, "UNAUTHORIZED", "malformed basic credentials", challenge)
        user = None
        if creds is not None:
            user = self.server.users.authenticate(*creds)
            if user is None:
                # the user name is not a secret; the token is never logged
                sys.stderr.write("refused: bad credentials for user %r\n" % creds[0])
                return self.error(401, "UNAUTHORIZED", "bad credentials", challenge)
        access, dropped = [], []
        for scope in (s for param in query.get("scope", []) for s in param.split(" ") if s):
            parsed = parse_scope(scope)
            if parsed is None:
                return self.error(400, "UNSUPPORTED", "malformed scope %r" % scope)
            rtype, name, wanted = parsed
            granted = Users.grant(user, rtype, name, wanted)
            if granted:
                access.append({"type": rtype, "name": name, "actions": granted})
            if len(granted) < len(wanted):
                dropped.append("%s:%s:%s" % (rtype, name, ",".join(a for a in wanted if a not in granted)))
        now = int(time.time())
        claims = {
            "iss": cfg.issuer,
            "sub": user["name"] if user else "",
            "aud": cfg.service,  # a string: distribution 2.8 does not accept a list here
            "exp": now + TOKEN_LIFETIME_S,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        token = self.server.signer.sign(claims)
        sys.stderr.write(
            "token for %s: granted %s%s\n"
            % (
                user["name"] if user else "anonymous",
                " ".join("%s:%s:%s" % (a["type"], a["name"], ",".join(a["actions"])) for a in access) or "nothing",
                ("; dropped " + " ".join(dropped)) if dropped else "",
            )
        )
        issued = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.reply(200, {"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME_S, "issued_at": issued})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="HOST:PORT")
    p.add_argument("--tls-cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--signing-key", required=True, help="RSA private key (PEM) that signs tokens")
    p.add_argument("--signing-cert", required=True, help="its certificate: the registry's rootcertbundle")
    p.add_argument("--users", required=True, help="JSON file: {users: [{name, token, grants: [{type, name, actions}]}]}")
    p.add_argument("--issuer", required=True, help="`iss` of the tokens (the registry's auth.token.issuer)")
    p.add_argument("--service", required=True, help="`aud` of the tokens (the registry's auth.token.service)")
    cfg = p.parse_args()
    host, _, port = cfg.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    server.cfg = cfg
    server.users = Users(cfg.users)
    server.signer = Signer(cfg.signing_key, cfg.signing_cert)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    sys.stderr.write("ghcr-token-double: https://%s/token (service %r, issuer %r)\n" % (cfg.listen, cfg.service, cfg.issuer))
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
