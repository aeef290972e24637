//! A GitHub REST API **double** on loopback: the real GitHub cannot be reached from the test
//! machines, so prpod's GitHub client is tested against this stand-in for exactly the endpoints
//! prpod calls, answering with the shapes GitHub documents (the JSON of the REST reference's
//! examples, trimmed of fields prpod never reads but keeping the ones a client could trip on:
//! `user: null`, `node_id`, `author_association`, `Link` on `/repositories/{id}/...` URLs).
//!
//! - Every answer carries the rate-limit headers (`x-ratelimit-limit`, `-remaining`, `-used`,
//!   `-reset`, `-resource`), counting down per token.
//! - Faults on demand ([`GithubDouble::fail`]): a 5xx, a secondary rate limit (403 +
//!   `retry-after`), a used-up primary limit (403 + `x-ratelimit-remaining: 0` + reset), an HTML
//!   page with 200, a JSON body of the wrong shape.
//! - Tokens are known by value ([`GithubDouble::add_token`]); an unknown one gets 401. A GitHub
//!   App's JWT is checked as GitHub does (RS256 against the App's public key, `iss` = app id);
//!   the installation token it hands out is whatever the test chose (the world's git token, so
//!   the token clones from the world's git server).
//! - What was written is recorded: [`GithubDouble::writes`], the comments and deployments as
//!   they stand ([`GithubDouble::comments`], [`GithubDouble::deployments`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::http_double::{Answer, HttpDouble, Seen};

/// A fault the double answers with instead of the real thing.
#[derive(Debug, Clone)]
pub enum Fault {
    /// This status, with GitHub's JSON error body.
    Status(u16),
    /// A secondary rate limit: 403 with `retry-after: SECS`.
    RetryAfter(u64),
    /// The primary limit used up: 403, `x-ratelimit-remaining: 0`, reset in SECS.
    Exhausted(u64),
    /// 200 with an HTML page (a captive portal, a proxy's error page).
    Html,
    /// 200 with JSON of another shape (`{}` where a list belongs, `[]` where an object does).
    WrongShape,
}

/// A comment as the double keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoubleComment {
    /// Id.
    pub id: u64,
    /// Author's login.
    pub login: String,
    /// Body.
    pub body: String,
    /// How many times it was edited.
    pub edits: u32,
}

/// A deployment as the double keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoubleDeployment {
    /// Id.
    pub id: u64,
    /// Repository `owner/name`.
    pub repository: String,
    /// The ref deployed.
    pub sha: String,
    /// Environment.
    pub environment: String,
    /// Whether it was created transient.
    pub transient: bool,
    /// Its statuses in order: (state, environment_url).
    pub statuses: Vec<(String, Option<String>)>,
}

/// The double's GitHub App.
#[derive(Debug, Clone)]
struct App {
    id: u64,
    slug: String,
    public_pem: String,
    installation_id: u64,
    installation_token: String,
}

#[derive(Debug, Default)]
struct State {
    tokens: BTreeMap<String, (String, bool)>,
    repos: BTreeMap<String, u64>,
    comments: BTreeMap<(String, u64), Vec<DoubleComment>>,
    deployments: Vec<DoubleDeployment>,
    pulls: BTreeMap<(String, u64), Value>,
    packages: BTreeMap<String, Vec<(u64, String, Vec<String>)>>,
    environments_deletable: bool,
    deleted_environments: Vec<String>,
    faults: VecDeque<(String, Fault)>,
    used: BTreeMap<String, u64>,
    next_id: u64,
    app: Option<App>,
}

/// The running double.
pub struct GithubDouble {
    http: HttpDouble,
    state: Arc<Mutex<State>>,
}

/// The requests that are counted against this token per hour (GitHub's 5000).
const LIMIT: u64 = 5000;

impl GithubDouble {
    /// Starts a double with no tokens, repositories or comments.
    pub fn start() -> GithubDouble {
        let state = Arc::new(Mutex::new(State { next_id: 1_000_000, ..Default::default() }));
        let s2 = state.clone();
        let base: Arc<Mutex<String>> = Arc::default();
        let b2 = base.clone();
        let http = HttpDouble::start(move |req| {
            let base = b2.lock().unwrap().clone();
            handle(&s2, &base, req)
        });
        *base.lock().unwrap() = http.url();
        GithubDouble { http, state }
    }

    /// The API base URL (`[github] api_url`).
    pub fn url(&self) -> String {
        self.http.url()
    }

    /// Accepts `token` as user `login`; `installation` marks a `ghs_`-like token (no `/user`,
    /// no environment deletion), as Actions' `GITHUB_TOKEN` behaves.
    pub fn add_token(&self, token: &str, login: &str, installation: bool) {
        self.state.lock().unwrap().tokens.insert(token.into(), (login.into(), installation));
    }

    /// Sets up a GitHub App `slug` with id `id` whose JWTs are checked against `public_pem`;
    /// its installation on every repository hands out `installation_token`.
    pub fn add_app(&self, id: u64, slug: &str, public_pem: &str, installation_token: &str) {
        let mut s = self.state.lock().unwrap();
        s.app = Some(App {
            id,
            slug: slug.into(),
            public_pem: public_pem.into(),
            installation_id: 4_200_000 + id,
            installation_token: installation_token.into(),
        });
        s.tokens.insert(installation_token.into(), (format!("{slug}[bot]"), true));
    }

    /// Adds `n` comments by `login` to `repository#number`, body `body` (with its index).
    pub fn add_comments(&self, repository: &str, number: u64, login: &str, n: usize, body: &str) {
        let mut s = self.state.lock().unwrap();
        s.repo_id(repository);
        for i in 0..n {
            s.next_id += 1;
            let c = DoubleComment { id: s.next_id, login: login.into(), body: format!("{body} {i}"), edits: 0 };
            s.comments.entry((repository.into(), number)).or_default().push(c);
        }
    }

    /// Adds one comment verbatim; returns its id.
    pub fn add_comment(&self, repository: &str, number: u64, login: &str, body: &str) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.repo_id(repository);
        s.next_id += 1;
        let c = DoubleComment { id: s.next_id, login: login.into(), body: body.into(), edits: 0 };
        s.comments.entry((repository.into(), number)).or_default().push(c);
        s.next_id
    }

    /// Sets PR `number`'s state: `open`, `closed` or `merged`.
    pub fn set_pull(&self, repository: &str, number: u64, state: &str) {
        let mut s = self.state.lock().unwrap();
        let id = s.repo_id(repository);
        s.pulls.insert((repository.into(), number), pull_json(repository, id, number, state));
    }

    /// Adds a container package version `digest` with `tags` to package `package`; returns its id.
    pub fn add_package_version(&self, package: &str, digest: &str, tags: &[&str]) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        s.packages.entry(package.into()).or_default().push((
            id,
            digest.into(),
            tags.iter().map(|t| t.to_string()).collect(),
        ));
        id
    }

    /// The versions of `package` left: (id, digest, tags).
    pub fn package_versions(&self, package: &str) -> Vec<(u64, String, Vec<String>)> {
        self.state.lock().unwrap().packages.get(package).cloned().unwrap_or_default()
    }

    /// Whether a non-installation token may delete environments (Administration: write).
    pub fn allow_environment_deletion(&self, yes: bool) {
        self.state.lock().unwrap().environments_deletable = yes;
    }

    /// Environments deleted so far.
    pub fn deleted_environments(&self) -> Vec<String> {
        self.state.lock().unwrap().deleted_environments.clone()
    }

    /// The next request whose path contains `path_part` gets `fault` (queued in order; `""`
    /// matches any request).
    pub fn fail(&self, path_part: &str, fault: Fault) {
        self.state.lock().unwrap().faults.push_back((path_part.into(), fault));
    }

    /// The comments of `repository#number` as they stand.
    pub fn comments(&self, repository: &str, number: u64) -> Vec<DoubleComment> {
        self.state.lock().unwrap().comments.get(&(repository.into(), number)).cloned().unwrap_or_default()
    }

    /// Every deployment, in creation order.
    pub fn deployments(&self) -> Vec<DoubleDeployment> {
        self.state.lock().unwrap().deployments.clone()
    }

    /// Every request seen.
    pub fn requests(&self) -> Vec<Seen> {
        self.http.seen()
    }

    /// The requests that write (every method but GET and HEAD), as `METHOD path`.
    pub fn writes(&self) -> Vec<String> {
        self.http
            .seen()
            .into_iter()
            .filter(|r| r.method != "GET" && r.method != "HEAD")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

impl State {
    fn repo_id(&mut self, repository: &str) -> u64 {
        let n = self.repos.len() as u64;
        *self.repos.entry(repository.into()).or_insert(700_000 + n)
    }

    fn repo_of_id(&self, id: u64) -> Option<String> {
        self.repos.iter().find(|(_, v)| **v == id).map(|(k, _)| k.clone())
    }
}

fn json_answer(status: u16, body: &Value) -> Answer {
    Answer::status(status)
        .header("Content-Type", "application/json; charset=utf-8")
        .header("X-GitHub-Media-Type", "github.v3; format=json")
        .body(body.to_string())
}

fn error(status: u16, message: &str) -> Answer {
    json_answer(
        status,
        &json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.to_string()}),
    )
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn user_json(login: &str) -> Value {
    let bot = login.ends_with("[bot]");
    json!({
        "login": login, "id": 583231, "node_id": "MDQ6VXNlcjU4MzIzMQ==",
        "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4", "gravatar_id": "",
        "url": format!("https://api.github.com/users/{login}"), "html_url": format!("https://github.com/{login}"),
        "type": if bot { "Bot" } else { "User" }, "site_admin": false
    })
}

fn comment_json(base: &str, repository: &str, number: u64, c: &DoubleComment) -> Value {
    json!({
        "url": format!("{base}/repos/{repository}/issues/comments/{}", c.id),
        "html_url": format!("https://github.com/{repository}/pull/{number}#issuecomment-{}", c.id),
        "issue_url": format!("{base}/repos/{repository}/issues/{number}"),
        "id": c.id, "node_id": format!("IC_kwDO{}", c.id),
        "user": if c.login.is_empty() { Value::Null } else { user_json(&c.login) },
        "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:00Z",
        "author_association": "MEMBER", "body": c.body, "reactions": {"total_count": 0},
        "performed_via_github_app": null
    })
}

fn pull_json(repository: &str, repo_id: u64, number: u64, state: &str) -> Value {
    let merged = state == "merged";
    json!({
        "url": format!("https://api.github.com/repos/{repository}/pulls/{number}"),
        "id": 2_112_000_000u64 + number, "number": number,
        "state": if merged { "closed" } else { state },
        "locked": false, "title": "A change", "draft": false,
        "merged": merged, "merged_at": if merged { json!("2026-12-02T10:00:00Z") } else { Value::Null },
        "closed_at": if state == "open" { Value::Null } else { json!("2026-12-02T10:00:00Z") },
        "head": {"ref": "feature", "sha": "0123456789abcdef0123456789abcdef01234567"},
        "base": {"ref": "main", "repo": {"id": repo_id, "full_name": repository}}
    })
}

fn query(path: &str) -> BTreeMap<String, String> {
    path.split_once('?')
        .map(|(_, q)| {
            q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
        })
        .unwrap_or_default()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who a request is: `Ok(Some((login, installation)))` for a token, `Ok(None)` for the App's JWT.
fn who(state: &State, req: &Seen) -> Result<Option<(String, bool)>, Answer> {
    let auth = req.header("authorization").unwrap_or_default();
    let token = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("token ")).unwrap_or_default();
    if let Some(t) = state.tokens.get(token) {
        return Ok(Some(t.clone()));
    }
    if let Some(app) = &state.app
        && token.matches('.').count() == 2
    {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(app.public_pem.as_bytes())
            .map_err(|e| error(500, &format!("double: bad public key: {e}")))?;
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_issuer(&[app.id.to_string()]);
        v.set_required_spec_claims(&["exp", "iat", "iss"]);
        return match jsonwebtoken::decode::<Value>(token, &key, &v) {
            Ok(_) => Ok(None),
            Err(e) => Err(error(401, &format!("A JSON web token could not be decoded ({e})"))),
        };
    }
    Err(error(401, "Bad credentials"))
}

fn handle(state: &Mutex<State>, base: &str, req: &Seen) -> Answer {
    let mut s = state.lock().unwrap();
    let mut answer = route(&mut s, base, req);
    // The rate-limit headers every answer carries (unless a fault set its own).
    if !answer.headers.iter().any(|(k, _)| k == "x-ratelimit-remaining") {
        let key = req.header("authorization").unwrap_or_default().to_string();
        let used = s.used.entry(key).or_default();
        *used += 1;
        let used = *used;
        answer = answer
            .header("x-ratelimit-limit", LIMIT.to_string())
            .header("x-ratelimit-remaining", LIMIT.saturating_sub(used).to_string())
            .header("x-ratelimit-used", used.to_string())
            .header("x-ratelimit-reset", (now_secs() + 3600).to_string())
            .header("x-ratelimit-resource", "core");
    }
    answer
}

fn route(s: &mut State, base: &str, req: &Seen) -> Answer {
    if let Some(pos) = s.faults.iter().position(|(p, _)| req.path.contains(p.as_str())) {
        let (_, fault) = s.faults.remove(pos).unwrap();
        return match fault {
            Fault::Status(code) => error(code, "Server Error"),
            Fault::RetryAfter(secs) => {
                error(403, "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.")
                    .header("retry-after", secs.to_string())
            }
            Fault::Exhausted(secs) => error(403, "API rate limit exceeded for installation.")
                .header("x-ratelimit-limit", LIMIT.to_string())
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-used", LIMIT.to_string())
                .header("x-ratelimit-reset", (now_secs() + secs).to_string())
                .header("x-ratelimit-resource", "core"),
            Fault::Html => Answer::status(200)
                .header("Content-Type", "text/html")
                .body("<!DOCTYPE html><html><body><h1>Unicorn!</h1></body></html>"),
            Fault::WrongShape => {
                let wants_list =
                    req.method == "GET" && (req.path.contains("/comments") || req.path.contains("/versions"));
                json_answer(200, &if wants_list { json!({"items": []}) } else { json!([]) })
            }
        };
    }
    let who = match who(s, req) {
        Ok(w) => w,
        Err(a) => return a,
    };
    let path = req.path.split('?').next().unwrap_or_default().to_string();
    let q = query(&req.path);
    let parts: Vec<String> = path.trim_start_matches('/').split('/').map(decode).collect();
    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let m = req.method.as_str();

    // The App's own endpoints take the JWT, and only the JWT.
    if let Some(app) = s.app.clone() {
        match (m, p.as_slice()) {
            ("GET", ["app"]) if who.is_none() => {
                return json_answer(
                    200,
                    &json!({"id": app.id, "slug": app.slug, "node_id": "A_kwDO", "name": app.slug,
                            "owner": user_json("acme"), "permissions": {"contents": "read", "pull_requests": "write"}}),
                );
            }
            ("GET", ["repos", owner, _, "installation"]) if who.is_none() => {
                return json_answer(
                    200,
                    &json!({"id": app.installation_id, "app_id": app.id, "app_slug": app.slug,
                            "account": user_json(owner), "target_type": "Organization",
                            "repository_selection": "selected"}),
                );
            }
            ("POST", ["app", "installations", id, "access_tokens"]) if who.is_none() => {
                if id.parse::<u64>().ok() != Some(app.installation_id) {
                    return error(404, "Not Found");
                }
                return json_answer(
                    201,
                    &json!({"token": app.installation_token, "expires_at": "2026-12-31T23:00:00Z",
                            "permissions": {"contents": "read", "pull_requests": "write", "deployments": "write"},
                            "repository_selection": "selected"}),
                );
            }
            _ if who.is_none() => {
                return error(
                    401,
                    "A JSON web token cannot be used to access this endpoint; use an installation token",
                );
            }
            _ => {}
        }
    }
    let Some((login, installation)) = who else { return error(401, "Bad credentials") };

    match (m, p.as_slice()) {
        ("GET", ["user"]) if installation => error(403, "Resource not accessible by integration"),
        ("GET", ["user"]) => json_answer(200, &user_json(&login)),
        ("GET", ["repos", o, r, "issues", n, "comments"]) => {
            let repo = format!("{o}/{r}");
            let id = s.repo_id(&repo);
            list_comments(s, base, &repo, id, n.parse().unwrap_or(0), &q)
        }
        ("GET", ["repositories", id, "issues", n, "comments"]) => {
            let id: u64 = id.parse().unwrap_or(0);
            match s.repo_of_id(id) {
                Some(repo) => list_comments(s, base, &repo, id, n.parse().unwrap_or(0), &q),
                None => error(404, "Not Found"),
            }
        }
        ("POST", ["repos", o, r, "issues", n, "comments"]) => {
            let repo = format!("{o}/{r}");
            let number: u64 = n.parse().unwrap_or(0);
            let Some(text) = body["body"].as_str() else { return error(422, "Invalid request: body is missing") };
            s.repo_id(&repo);
            s.next_id += 1;
            let c = DoubleComment { id: s.next_id, login, body: text.into(), edits: 0 };
            let out = comment_json(base, &repo, number, &c);
            s.comments.entry((repo, number)).or_default().push(c);
            json_answer(201, &out)
        }
        (m @ ("PATCH" | "DELETE"), ["repos", o, r, "issues", "comments", id]) => {
            let repo = format!("{o}/{r}");
            let id: u64 = id.parse().unwrap_or(0);
            let found = s
                .comments
                .iter_mut()
                .filter(|((rp, _), _)| *rp == repo)
                .find_map(|((_, n), list)| list.iter().position(|c| c.id == id).map(|i| (*n, list, i)));
            let Some((number, list, i)) = found else { return error(404, "Not Found") };
            if m == "DELETE" {
                list.remove(i);
                return Answer::status(204);
            }
            let Some(text) = body["body"].as_str() else { return error(422, "Invalid request: body is missing") };
            // Like GitHub, a token with write access may edit anyone's comment: keeping off an
            // impostor's comment is the client's job.
            list[i].body = text.into();
            list[i].edits += 1;
            let out = comment_json(base, &repo, number, &list[i]);
            json_answer(200, &out)
        }
        ("POST", ["repos", o, r, "deployments"]) => {
            let repo = format!("{o}/{r}");
            let (Some(sha), Some(env)) = (body["ref"].as_str(), body["environment"].as_str()) else {
                return error(422, "Invalid request: ref and environment are required");
            };
            s.next_id += 1;
            let d = DoubleDeployment {
                id: s.next_id,
                repository: repo.clone(),
                sha: sha.into(),
                environment: env.into(),
                transient: body["transient_environment"].as_bool().unwrap_or(false),
                statuses: vec![],
            };
            let out = deployment_json(base, &d, &login);
            s.deployments.push(d);
            json_answer(201, &out)
        }
        ("GET", ["repos", o, r, "deployments"]) => {
            let repo = format!("{o}/{r}");
            let env = q.get("environment").map(|e| decode(e));
            let list: Vec<Value> = s
                .deployments
                .iter()
                .rev()
                .filter(|d| d.repository == repo && env.as_ref().is_none_or(|e| *e == d.environment))
                .map(|d| deployment_json(base, d, &login))
                .collect();
            json_answer(200, &Value::Array(list))
        }
        ("POST", ["repos", o, r, "deployments", id, "statuses"]) => {
            let repo = format!("{o}/{r}");
            let id: u64 = id.parse().unwrap_or(0);
            let Some(d) = s.deployments.iter_mut().find(|d| d.id == id && d.repository == repo) else {
                return error(404, "Not Found");
            };
            let Some(state) = body["state"].as_str() else { return error(422, "Invalid request: state is missing") };
            if !["error", "failure", "inactive", "in_progress", "queued", "pending", "success"].contains(&state) {
                return error(422, &format!("Invalid request: state `{state}` is not a valid deployment state"));
            }
            d.statuses.push((state.into(), body["environment_url"].as_str().map(str::to_string)));
            json_answer(
                201,
                &json!({"id": id * 10 + d.statuses.len() as u64, "state": state, "creator": user_json(&login),
                        "environment_url": body["environment_url"], "description": body["description"],
                        "deployment_url": format!("{base}/repos/{repo}/deployments/{id}")}),
            )
        }
        ("DELETE", ["repos", _, _, "environments", name]) => {
            if installation || !s.environments_deletable {
                return error(403, "Resource not accessible by integration");
            }
            s.deleted_environments.push(name.to_string());
            Answer::status(204)
        }
        ("GET", ["repos", o, r, "pulls", n]) => {
            let repo = format!("{o}/{r}");
            match s.pulls.get(&(repo, n.parse().unwrap_or(0))) {
                Some(p) => json_answer(200, p),
                None => error(404, "Not Found"),
            }
        }
        ("GET", [_kind @ ("orgs" | "users"), _, "packages", "container", name, "versions"]) => {
            let list: Vec<Value> = s
                .packages
                .get(*name)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|(id, digest, tags)| {
                    json!({"id": id, "name": digest, "url": format!("{base}/packages/versions/{id}"),
                           "package_html_url": "https://github.com/acme/packages", "created_at": "2026-12-01T10:00:00Z",
                           "updated_at": "2026-12-01T10:00:00Z", "html_url": "https://github.com/acme/pkgs/container/x",
                           "metadata": {"package_type": "container", "container": {"tags": tags}}})
                })
                .collect();
            json_answer(200, &Value::Array(list))
        }
        ("DELETE", [_kind @ ("orgs" | "users"), _, "packages", "container", name, "versions", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let Some(list) = s.packages.get_mut(*name) else { return error(404, "Package not found.") };
            let before = list.len();
            list.retain(|(v, _, _)| *v != id);
            if list.len() == before { error(404, "Not Found") } else { Answer::status(204) }
        }
        _ => error(404, "Not Found"),
    }
}

fn deployment_json(base: &str, d: &DoubleDeployment, login: &str) -> Value {
    json!({
        "url": format!("{base}/repos/{}/deployments/{}", d.repository, d.id),
        "id": d.id, "node_id": format!("DE_kwDO{}", d.id), "sha": d.sha, "ref": d.sha, "task": "deploy",
        "payload": {}, "original_environment": d.environment, "environment": d.environment,
        "description": null, "creator": user_json(login), "created_at": "2026-12-01T10:00:00Z",
        "updated_at": "2026-12-01T10:00:00Z", "transient_environment": d.transient, "production_environment": false
    })
}

fn list_comments(s: &State, base: &str, repo: &str, repo_id: u64, number: u64, q: &BTreeMap<String, String>) -> Answer {
    let all = s.comments.get(&(repo.to_string(), number)).cloned().unwrap_or_default();
    let per_page: usize = q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(30).clamp(1, 100);
    let page: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let last = all.len().div_ceil(per_page).max(1);
    let items: Vec<Value> =
        all.iter().skip((page - 1) * per_page).take(per_page).map(|c| comment_json(base, repo, number, c)).collect();
    let mut a = json_answer(200, &Value::Array(items));
    // GitHub's own next links name the repository by id.
    let link =
        |p: usize| format!("{base}/repositories/{repo_id}/issues/{number}/comments?per_page={per_page}&page={p}");
    let mut rels = Vec::new();
    if page > 1 {
        rels.push(format!("<{}>; rel=\"prev\"", link(page - 1)));
    }
    if page < last {
        rels.push(format!("<{}>; rel=\"next\"", link(page + 1)));
        rels.push(format!("<{}>; rel=\"last\"", link(last)));
    }
    if page > 1 {
        rels.push(format!("<{}>; rel=\"first\"", link(1)));
    }
    if !rels.is_empty() {
        a = a.header("Link", rels.join(", "));
    }
    a
}
