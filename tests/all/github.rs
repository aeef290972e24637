//! prpod and GitHub, against the GitHub **double** of `prpod_test_support::github_double` (the
//! real GitHub cannot be reached from here): the client's paging, rate-limit waits, 5xx retries
//! and malformed answers; a GitHub App's key exchanged for an installation token that clones from
//! the world's git server; `prpod event` deciding what an event means (and writing nothing for a
//! skipped one); and, with the world, one comment per PR edited in place and the deployment's
//! statuses in order.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use prpod::clients::github::{
    AppCredentials, GithubClient, GithubError, GithubOptions, PackageOwner, PullState, TokenKind,
};
use prpod::secret::Secret;
use prpod_test_support::github_double::{Fault, GithubDouble};
use prpod_test_support::{TempDir, unique_name, world};

/// The double's answer to a PAT: user `octocat`.
const PAT: &str = "ghp_double0000000000000000000000000000";

fn client(double: &GithubDouble) -> GithubClient {
    let opts = GithubOptions {
        api_url: double.url().parse().unwrap(),
        initial_backoff: Duration::from_millis(20),
        max_wait: Duration::from_secs(5),
        ..Default::default()
    };
    GithubClient::with_token(opts, Secret::new(PAT)).unwrap()
}

fn double() -> GithubDouble {
    let d = GithubDouble::start();
    d.add_token(PAT, "octocat", false);
    d
}

#[tokio::test]
async fn double_comments_are_read_across_every_page() {
    let d = double();
    d.add_comments("acme/web", 7, "someone", 250, "hello");
    let c = client(&d);
    let all = c.list_issue_comments("acme/web", 7).await.unwrap();
    assert_eq!(all.len(), 250);
    assert_eq!(all[249].body, "hello 249");
    let gets: Vec<String> = d.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert!(gets[0].starts_with("/repos/acme/web/issues/7/comments?per_page=100"), "{gets:?}");
    // The next pages are the Link header's URLs, as GitHub sends them (by repository id).
    assert!(gets[1].starts_with("/repositories/") && gets[1].ends_with("page=2"), "{gets:?}");
    assert!(gets[2].ends_with("page=3"), "{gets:?}");
    assert_eq!(c.api_calls(), 3);
    assert_eq!(c.identity().await.unwrap().login, "octocat");
    assert!(d.requests().iter().all(|r| r.header("authorization") == Some(&format!("Bearer {PAT}")[..])));
}

#[tokio::test]
async fn double_secondary_rate_limit_is_waited_out() {
    let d = double();
    d.fail("/comments", Fault::RetryAfter(1));
    let c = client(&d);
    let t = Instant::now();
    let made = c.create_issue_comment("acme/web", 7, "hi").await.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1), "retry-after was not honoured: {:?}", t.elapsed());
    assert_eq!(made.body, "hi");
    assert_eq!(c.api_calls(), 2);
    assert_eq!(d.comments("acme/web", 7).len(), 1);
}

#[tokio::test]
async fn double_used_up_limit_is_waited_for_or_reported() {
    let d = double();
    // Resets in 1 s: waited for, then the call goes through.
    d.fail("/user", Fault::Exhausted(1));
    let c = client(&d);
    let t = Instant::now();
    assert_eq!(c.identity().await.unwrap().login, "octocat");
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());
    // Resets in an hour: longer than prpod waits, so it says when, with exit code 4.
    d.fail("/user", Fault::Exhausted(3600));
    let err = c.identity().await.unwrap_err();
    assert!(matches!(err, GithubError::RateLimited { wait_secs, .. } if wait_secs > 3000), "{err}");
    assert!(err.to_string().contains("rate limit is used up until"), "{err}");
    assert_eq!(
        prpod::error::exit_code_for(&anyhow::Error::new(prpod::error::PhaseError::outside_line(err))),
        prpod::error::EXIT_EXTERNAL
    );
}

#[tokio::test]
async fn double_5xx_is_retried_a_bounded_number_of_times() {
    let d = double();
    d.fail("/pulls/3", Fault::Status(502));
    d.fail("/pulls/3", Fault::Status(503));
    d.set_pull("acme/web", 3, "merged");
    let c = client(&d);
    assert_eq!(c.pull_state("acme/web", 3).await.unwrap(), PullState::Merged);
    assert_eq!(c.api_calls(), 3);
    for _ in 0..4 {
        d.fail("/pulls/3", Fault::Status(502));
    }
    let err = c.pull_state("acme/web", 3).await.unwrap_err();
    assert!(matches!(err, GithubError::Unavailable { attempts: 4, .. }), "{err}");
    assert_eq!(c.api_calls(), 7);
}

#[tokio::test]
async fn double_malformed_answers_are_errors_never_guesses() {
    let d = double();
    d.set_pull("acme/web", 4, "closed");
    let c = client(&d);
    assert_eq!(c.pull_state("acme/web", 4).await.unwrap(), PullState::Closed);
    d.fail("/pulls/4", Fault::Html);
    let err = c.pull_state("acme/web", 4).await.unwrap_err();
    assert!(matches!(err, GithubError::Malformed { .. }), "{err}");
    d.fail("/pulls/4", Fault::WrongShape);
    assert!(matches!(c.pull_state("acme/web", 4).await.unwrap_err(), GithubError::Malformed { .. }));
    d.fail("/comments", Fault::WrongShape);
    assert!(matches!(c.list_issue_comments("acme/web", 4).await.unwrap_err(), GithubError::Malformed { .. }));
    // A 401 is the token's fault (exit 2), not GitHub's.
    let bad = GithubClient::with_token(
        GithubOptions { api_url: d.url().parse().unwrap(), ..Default::default() },
        Secret::new("ghp_wrong"),
    )
    .unwrap();
    let err = bad.pull_state("acme/web", 4).await.unwrap_err();
    assert!(matches!(err, GithubError::Unauthorized { .. }), "{err}");
    assert!(!err.to_string().contains("ghp_wrong"), "{err}");
    assert_eq!(
        prpod::error::exit_code_for(&anyhow::Error::new(prpod::error::PhaseError::outside_line(err))),
        prpod::error::EXIT_INPUT
    );
}

#[tokio::test]
async fn double_ghcr_versions_are_listed_with_tags_and_deleted() {
    let d = double();
    let keep = d.add_package_version("web", "sha256:aa", &["main"]);
    let gone = d.add_package_version("web", "sha256:bb", &["pr-7", "sha-0123456789ab"]);
    let c = client(&d);
    let owner = PackageOwner::Org("acme".into());
    let versions = c.list_package_versions(&owner, "web").await.unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1].tags, ["pr-7", "sha-0123456789ab"]);
    assert_eq!(versions[1].digest, "sha256:bb");
    c.delete_package_version(&owner, "web", gone).await.unwrap();
    // A second delete finds nothing and counts as done.
    c.delete_package_version(&owner, "web", gone).await.unwrap();
    let left: Vec<u64> = d.package_versions("web").iter().map(|v| v.0).collect();
    assert_eq!(left, [keep]);
}

/// An RSA key pair made for the test: (private PEM, public PEM).
fn app_key(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("app.pem");
    let out = Command::new("openssl").args(["genrsa", "-out"]).arg(&key).arg("2048").output().unwrap();
    assert!(out.status.success(), "openssl genrsa: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("openssl").args(["rsa", "-pubout", "-in"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "openssl rsa -pubout: {}", String::from_utf8_lossy(&out.stderr));
    (key, String::from_utf8(out.stdout).unwrap())
}

/// A GitHub App's private key yields an installation token from the double (the JWT checked
/// RS256 against the App's public key); the double hands out the world's git token as that
/// installation token, so it clones from the world's git server (whose htpasswd user is the
/// world's git user: the clone sends that name, where GitHub takes `x-access-token`).
#[tokio::test]
async fn double_app_key_yields_an_installation_token_that_clones() {
    let w = world();
    let dir = TempDir::new("gh-app");
    let (key, public) = app_key(dir.path());
    let d = GithubDouble::start();
    d.add_app(4242, "prpod-previews", &public, w.git.token.expose());
    let name = unique_name("app-clone");
    let url = w.git.publish(&crate::repo_root().join("examples/hello-web"), &name);
    let slug = format!("acme/{name}");
    let app = AppCredentials {
        app_id: 4242,
        private_key: Secret::new(std::fs::read_to_string(&key).unwrap()),
        source_desc: key.display().to_string(),
        installation_id: None,
    };
    let opts = GithubOptions { api_url: d.url().parse().unwrap(), ..Default::default() };
    let c = GithubClient::for_app(opts.clone(), &app, &slug).await.unwrap();
    assert_eq!(c.token_kind(), TokenKind::App);
    assert_eq!(c.identity().await.unwrap().login, "prpod-previews[bot]");
    assert_eq!(c.api_calls(), 3, "GET /app, the installation, the token");
    let out =
        w.git.git_with_token(c.token()).args(["clone", "-q", &url]).arg(dir.path().join("clone")).output().unwrap();
    assert!(out.status.success(), "clone with the installation token: {}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("clone/Dockerfile").is_file());

    // Another key (not the App's) is refused by the double, as GitHub refuses it.
    let other = TempDir::new("gh-app-other");
    let (wrong, _) = app_key(other.path());
    let app = AppCredentials { private_key: Secret::new(std::fs::read_to_string(&wrong).unwrap()), ..app };
    let err = GithubClient::for_app(opts, &app, &slug).await.unwrap_err();
    assert!(matches!(err, GithubError::Unauthorized { .. }), "{err}");
}

/// `prpod ARGS` with the event payload `payload` (a `GITHUB_EVENT_NAME` of `event`), the
/// double's URL and a token; no cluster, registry or git server in reach.
fn prpod_event(dir: &Path, event: &str, payload: &serde_json::Value, extra_config: &str, api: &str) -> Output {
    let path = dir.join("event.json");
    std::fs::write(&path, payload.to_string()).unwrap();
    let config = dir.join("prpod.toml");
    std::fs::write(&config, format!("[github]\napi_url = \"{api}\"\n{extra_config}")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_prpod"))
        .args(["--output", "json", "--config"])
        .arg(&config)
        .arg("event")
        .current_dir(dir)
        .env("GITHUB_EVENT_PATH", &path)
        .env("GITHUB_EVENT_NAME", event)
        .env("GITHUB_TOKEN", PAT)
        .env_remove("PRPOD_GITHUB_TOKEN")
        .env_remove("GITHUB_STEP_SUMMARY")
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap()
}

/// The repository's fixture payload `name`, with `edit` applied.
fn payload(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let text = std::fs::read_to_string(crate::repo_root().join("tests/fixtures/github").join(name)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    v
}

/// Skipped and refused events: a draft, a fork under `pull_request` (a notice, exit 0) and under
/// `pull_request_target` (refused, exit 2), a label that is not the required one, a synchronize
/// after the required label was applied at an earlier commit. None of them writes anything to
/// the GitHub double, or reaches the cluster.
#[test]
fn double_skipped_events_write_nothing_to_github() {
    let d = double();
    let dir = TempDir::new("gh-event");
    let url = d.url();
    let case = |event: &str, p: serde_json::Value, config: &str| {
        let out = prpod_event(dir.path(), event, &p, config, &url);
        // The document, compact: `"action":"skip"` whatever the pretty-printing.
        let text = serde_json::from_slice::<serde_json::Value>(&out.stdout).map(|v| v.to_string()).unwrap_or_default();
        (out.status.code(), text, crate::stderr(&out))
    };

    let draft = payload("pull_request.opened.json", |v| v["pull_request"]["draft"] = true.into());
    let (code, out, err) = case("pull_request", draft.clone(), "");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\"action\":\"skip\"") && out.contains("draft"), "{out}");

    let fork = payload("pull_request.fork.json", |_| {});
    let (code, out, err) = case("pull_request", fork.clone(), "");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\"action\":\"skip\"") && out.contains("fork"), "{out}");
    assert!(err.contains("notice"), "a fork under pull_request says why it skipped: {err}");

    let (code, out, err) = case("pull_request_target", fork, "");
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(err.contains("allow_forks"), "{err}");

    let labeled = payload("pull_request.opened.json", |v| {
        v["action"] = "labeled".into();
        v["label"] = serde_json::json!({"name": "docs"});
    });
    let (code, out, err) = case("pull_request", labeled, "require_label = \"preview\"\n");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\"action\":\"skip\""), "{out}");

    // The label is on the PR, but it was applied before this push: it does not count.
    let pushed = payload("pull_request.synchronize.json", |v| {
        v["pull_request"]["draft"] = false.into();
        v["pull_request"]["labels"] = serde_json::json!([{"name": "preview"}]);
    });
    let (code, out, err) = case("pull_request", pushed, "require_label = \"preview\"\n");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\"action\":\"skip\"") && out.contains("earlier commit"), "{out}");

    let (code, out, err) = case("push", draft, "");
    assert_eq!(code, Some(2), "{out}\n{err}");

    assert_eq!(d.writes(), Vec::<String>::new(), "a skipped event wrote to GitHub");
    assert!(d.requests().is_empty(), "a skipped event called GitHub: {:?}", d.requests().len());
}

/// The example PR driven by events against the world and the GitHub double, as a GitHub App
/// (whose installation token, handed out by the double, is what clones): `opened` deploys and
/// comments once among 250 other comments (an impostor's comment carrying prpod's marker is left
/// untouched); `synchronize` edits that one comment in place (a duplicate of prpod's own is
/// deleted), and each run's Deployment goes `in_progress` then `success` with the preview's URL;
/// with `require_label`, a push after the label is skipped (no call to GitHub) and `labeled` runs
/// that commit; `closed` tears the preview down, marks the Deployment `inactive` and reports the environment
/// left behind (an installation token cannot delete environments). Every event's document
/// counts exactly the GitHub requests the double saw.
#[test]
fn double_events_drive_one_comment_and_deployments_through_a_preview() {
    use crate::run::{PrBranch, Preview, explain, pages};
    let w = world();
    let name = unique_name("acme/hello-web");
    let url = w.git.publish(&crate::repo_root().join("examples/hello-web"), &name);
    let slug = format!("acme/{name}");
    let branch = PrBranch::clone(&url, "feature/greeting");
    let commit = |text: &str| branch.commit_and_push(text);
    let repo = unique_name("prpod-test/event");
    let p = Preview::new(false, &repo, "").of_repository(&slug);
    let d = GithubDouble::start();
    let keys = TempDir::new("gh-app-key");
    let (key, public) = app_key(keys.path());
    d.add_app(77, "prpod-previews", &public, w.git.token.expose());
    let me = "prpod-previews[bot]";
    let marker = format!("<!-- prpod:preview repository={slug} pr={} instance=prpod -->", p.pr);
    d.add_comments(&slug, p.pr, "reviewer", 250, "looks good");
    let impostor = d.add_comment(&slug, p.pr, "mallory", &format!("{marker}\nPreview: https://evil.example"));
    std::fs::write(
        p.dir.path().join("prpod.toml"),
        format!(
            "[source]\nusername = \"{}\"\n\n[image]\nrepository = \"{}\"\nbuild_args = {{ BASE = \"{}\" }}\n\n\
             [build]\nbackend = \"native\"\n\n[deploy]\ntimeout = \"90s\"\nset = {{ terminationGracePeriodSeconds = 1 }}\n\n\
             [github]\napi_url = \"{}\"\n",
            w.git.user,
            p.repository,
            w.web_image_tls.replacen(&w.registry_tls.host, &w.registry_tls.host_pod, 1),
            d.url()
        ),
    )
    .unwrap();
    let summary = p.dir.path().join("summary.md");
    // `label`: the PR carries it, and a `labeled` event names it; `require`: `require_label`.
    let labelled_event = |action: &str, sha: &str, label: Option<&str>, require: Option<&str>| {
        let payload = payload("pull_request.opened.json", |v| {
            v["action"] = action.into();
            v["number"] = p.pr.into();
            if let Some(l) = label {
                v["label"] = serde_json::json!({"name": l});
            }
            let pr = &mut v["pull_request"];
            pr["number"] = p.pr.into();
            pr["draft"] = false.into();
            pr["labels"] = serde_json::json!(label.map(|l| vec![serde_json::json!({"name": l})]).unwrap_or_default());
            pr["head"]["sha"] = sha.into();
            pr["head"]["ref"] = "feature/greeting".into();
            pr["base"]["ref"] = "main".into();
            for side in ["head", "base"] {
                pr[side]["repo"]["full_name"] = slug.clone().into();
                pr[side]["repo"]["clone_url"] = url.clone().into();
            }
        });
        let path = p.dir.path().join("event.json");
        std::fs::write(&path, payload.to_string()).unwrap();
        let before = d.requests().len();
        let out = p
            .command(&["--output", "json", "event"])
            .env_remove("PRPOD_GIT_TOKEN")
            .env_remove("GITHUB_TOKEN")
            .env("GITHUB_EVENT_NAME", "pull_request")
            .env("GITHUB_EVENT_PATH", &path)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env("PRPOD_GITHUB_APP_ID", "77")
            .env("PRPOD_GITHUB_APP_PRIVATE_KEY_FILE", &key)
            .env("PRPOD_GITHUB_REQUIRE_LABEL", require.unwrap_or(""))
            .output()
            .unwrap();
        crate::run::assert_no_secrets(&out.stdout, "stdout");
        crate::run::assert_no_secrets(&out.stderr, "stderr");
        let calls = (d.requests().len() - before) as u64;
        (out, calls)
    };
    let event = |action: &str, sha: &str| labelled_event(action, sha, None, None);
    let ours = || -> Vec<_> { d.comments(&slug, p.pr).into_iter().filter(|c| c.login == me).collect() };

    let sha1 = commit("hello");
    let (out, calls) = event("opened", &sha1);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let r = crate::json(&out);
    assert_eq!(r["action"], "run", "{r}");
    assert_eq!(r["run"]["revision"], 1, "{r}");
    assert_eq!(r["github"]["api_calls"], calls, "{r}");
    assert_eq!(r["github"]["identity"], me);
    let mine = ours();
    assert_eq!(mine.len(), 1, "{mine:?}");
    let first = mine[0].id;
    assert!(mine[0].body.starts_with(&marker) && mine[0].body.contains(&sha1), "{}", mine[0].body);
    let digest1 = r["run"]["image"]["digest"].as_str().unwrap().to_string();
    assert!(mine[0].body.contains(&digest1), "{}", mine[0].body);
    let served = pages(&p.ns);
    assert!(served.iter().any(|s| s.contains(&sha1)), "{served:?}");
    // The image names its repository, so GHCR links the package to it.
    let reg = &w.registry_tls;
    let image = format!("{}@{digest1}", p.repository);
    let inspect = Command::new("skopeo")
        .args(["inspect", "--config", "--cert-dir"])
        .arg(reg.cert_dir.as_ref().unwrap())
        .arg("--authfile")
        .arg(reg.authfile.as_ref().unwrap())
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(inspect.status.success(), "skopeo: {}", String::from_utf8_lossy(&inspect.stderr));
    let config: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let source = &config["config"]["Labels"]["org.opencontainers.image.source"];
    assert_eq!(source, url.trim_end_matches(".git"), "{config}");
    let annotation =
        w.kubectl_ok(["get", "namespace", &p.ns, "-o", "jsonpath={.metadata.annotations.prpod\\.dev/github-comment}"]);
    assert_eq!(annotation.trim(), first.to_string());

    // A duplicate of prpod's own comment (a run that died between create and annotate).
    let dup = d.add_comment(&slug, p.pr, me, &format!("{marker}\nold"));
    let sha2 = commit("hello again");
    let (out, calls) = event("synchronize", &sha2);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let r = crate::json(&out);
    assert_eq!(r["run"]["revision"], 2, "{r}");
    assert_eq!(r["github"]["api_calls"], calls, "{r}");
    assert_eq!(r["github"]["duplicates_deleted"], 1, "{r}");
    let mine = ours();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!((mine[0].id, mine[0].edits), (first, 1), "the first comment, edited once");
    assert!(mine[0].body.contains(&sha2) && !mine[0].body.contains(&sha1), "{}", mine[0].body);
    assert!(mine.iter().all(|c| c.id != dup));
    let all = d.comments(&slug, p.pr);
    assert_eq!(all.len(), 252, "250 + the impostor's + prpod's one");
    let evil = all.iter().find(|c| c.id == impostor).unwrap();
    assert_eq!(evil.edits, 0, "the impostor's comment was edited");
    assert!(evil.body.contains("evil.example"));

    let deployments = d.deployments();
    assert_eq!(deployments.len(), 2, "{deployments:?}");
    let environment = format!("preview/pr-{}", p.pr);
    for (dep, sha) in deployments.iter().zip([&sha1, &sha2]) {
        assert_eq!((&dep.sha, &dep.environment, dep.transient), (sha, &environment, true), "{dep:?}");
        let states: Vec<&str> = dep.statuses.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(states, ["in_progress", "success"], "{dep:?}");
        let page = dep.statuses[1].1.as_deref().expect("success carries environment_url");
        assert!(page.starts_with("http"), "{page}");
    }
    let text = std::fs::read_to_string(&summary).unwrap();
    assert_eq!(text.matches("prpod preview: ready").count(), 2, "{text}");

    // With `require_label = "safe"`: a push after the label was applied is skipped, writing and
    // asking nothing; applying the label again runs that exact commit.
    let sha3 = commit("hello, labelled");
    let (out, calls) = labelled_event("synchronize", &sha3, Some("safe"), Some("safe"));
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(crate::json(&out)["action"], "skip");
    assert_eq!(calls, 0, "a skipped event called GitHub");
    assert_eq!(d.deployments().len(), 2);
    let (out, _) = labelled_event("labeled", &sha3, Some("safe"), Some("safe"));
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let r = crate::json(&out);
    assert_eq!((&r["action"], &r["run"]["revision"]), (&"run".into(), &3.into()), "{r}");
    assert_eq!(d.deployments()[2].sha, sha3);
    let mine = ours();
    assert_eq!((mine.len(), mine[0].id, mine[0].edits), (1, first, 2), "{mine:?}");
    assert!(mine[0].body.contains(&sha3));

    let (out, calls) = event("closed", &sha3);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let r = crate::json(&out);
    assert_eq!(r["action"], "teardown", "{r}");
    assert_eq!(r["github"]["api_calls"], calls, "{r}");
    assert_eq!(r["github"]["environment_left_behind"], environment.as_str(), "{r}");
    let states: Vec<String> = d.deployments()[2].statuses.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(states, ["in_progress", "success", "inactive"]);
    let mine = ours();
    assert_eq!(mine.len(), 1);
    assert!(mine[0].body.contains("torn down"), "{}", mine[0].body);
    let gone = w.kubectl(["get", "namespace", &p.ns]);
    assert!(!gone.status.success() || String::from_utf8_lossy(&gone.stdout).contains("Terminating"));
}

/// `doctor` names the GitHub credential's kind and checks it with the double; with the image on
/// GHCR it fails an installation token (`ghs_`) given to the registry outside Actions (a GitHub
/// App's, which GHCR refuses) and warns that an App's token does not serve GHCR.
#[test]
fn double_doctor_names_the_token_kind_and_the_ghcr_limit() {
    let d = double();
    let dir = TempDir::new("gh-doctor");
    let keys = TempDir::new("gh-doctor-key");
    let (key, public) = app_key(keys.path());
    d.add_app(91, "prpod-doctor", &public, "ghs_installation0000000000000000000");
    std::fs::write(
        dir.path().join("prpod.toml"),
        format!("[image]\nrepository = \"ghcr.io/acme/web\"\n\n[github]\napi_url = \"{}\"\n", d.url()),
    )
    .unwrap();
    // Each doctor spends ~15 s on the unreachable ghcr.io (its registry checks retry): the four
    // run side by side.
    let doctor = |envs: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_prpod"));
        c.args(["--output", "json", "--config"])
            .arg(dir.path().join("prpod.toml"))
            .args(["doctor", "--namespace", "default"])
            .current_dir(dir.path())
            .env("KUBECONFIG", "/nonexistent")
            .env("PRPOD_REGISTRY_USER", "x-access-token")
            .env_remove("GITHUB_TOKEN")
            .env_remove("GITHUB_ACTIONS")
            .env_remove("PRPOD_GITHUB_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in envs {
            c.env(k, v);
        }
        c.spawn().unwrap()
    };
    let checks_of = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        let r = crate::json(&out);
        let checks: Vec<serde_json::Value> = r["checks"].as_array().unwrap().clone();
        let find = |name: &str| checks.iter().find(|c| c["name"] == name).cloned();
        (find("github"), find("ghcr token"))
    };
    let key = key.display().to_string();
    let pat = doctor(&[("GITHUB_TOKEN", PAT), ("PRPOD_REGISTRY_PASSWORD", "ghs_fromanapp0000000000000000")]);
    // In Actions a ghs_ token is the workflow's GITHUB_TOKEN, which GHCR takes.
    let actions = doctor(&[
        ("GITHUB_TOKEN", PAT),
        ("GITHUB_ACTIONS", "true"),
        ("PRPOD_REGISTRY_PASSWORD", "ghs_workflow00000000000000000000"),
    ]);
    let app = doctor(&[
        ("PRPOD_GITHUB_APP_ID", "91"),
        ("PRPOD_GITHUB_APP_PRIVATE_KEY_FILE", &key),
        ("GITHUB_REPOSITORY", "acme/web"),
        ("PRPOD_REGISTRY_PASSWORD", PAT),
    ]);
    let revoked = doctor(&[("GITHUB_TOKEN", "ghp_revoked")]);

    let (github, ghcr) = checks_of(pat);
    let github = github.expect("a github check");
    assert_eq!(github["status"], "ok", "{github}");
    assert!(github["detail"].as_str().unwrap().contains("classic personal access token (ghp_) as octocat"), "{github}");
    let ghcr = ghcr.expect("a ghcr check");
    assert_eq!(ghcr["status"], "fail", "{ghcr}");
    assert!(ghcr["detail"].as_str().unwrap().contains("GHCR refuses App installation tokens"), "{ghcr}");

    let (_, ghcr) = checks_of(actions);
    assert!(ghcr.is_none(), "{ghcr:?}");
    let (github, ghcr) = checks_of(app);
    let github = github.unwrap();
    assert_eq!(github["status"], "ok", "{github}");
    assert!(github["detail"].as_str().unwrap().contains("as prpod-doctor[bot]"), "{github}");
    assert_eq!(ghcr.unwrap()["status"], "warn");

    let (github, _) = checks_of(revoked);
    assert_eq!(github.unwrap()["status"], "fail");
}

/// `gc --closed-from-github` against the double: an answer that is a 502 (after every retry), a
/// 401, an HTML page or `[]` leaves the PR's state unknown, so nothing is collected and the exit
/// code says so (8); a real answer collects exactly the closed PR, and the report counts the
/// GitHub calls.
#[test]
fn double_gc_acts_only_on_prs_github_positively_said_are_closed() {
    use crate::run::{Preview, explain};
    let d = double();
    let slug = format!("acme/{}", unique_name("gc-gh"));
    let p = Preview::new(false, &slug, &format!("\n[github]\napi_url = \"{}\"\n", d.url()));
    let ns = crate::gc::previews(&slug, 1, 3, 1);
    d.set_pull(&slug, 1, "open");
    d.set_pull(&slug, 2, "merged");
    d.set_pull(&slug, 3, "open");
    let exists = |ns: &str| {
        let out = world().kubectl(["get", "ns", ns, "-o", "jsonpath={.status.phase}"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "Active"
    };
    let gc = |token: &str| {
        let out = p
            .command(&["--output", "json", "gc", "--repository", &slug, "--closed-from-github"])
            .env("GITHUB_TOKEN", token)
            .output()
            .unwrap();
        let r = crate::json(&out);
        (out, r)
    };
    for (what, fault, n) in [("502", Fault::Status(502), 12), ("HTML", Fault::Html, 3), ("[]", Fault::WrongShape, 3)] {
        for _ in 0..n {
            d.fail("/pulls/", fault.clone());
        }
        let (out, r) = gc(PAT);
        assert_eq!(out.status.code(), Some(8), "{what}: {}", explain(&out));
        assert_eq!(r["unknown"].as_array().map(Vec::len), Some(3), "{what}: {r}");
        assert!(ns.iter().all(|n| exists(&n.0)), "{what}: a preview was collected");
    }
    let (out, _) = gc("ghp_unknown_to_github");
    assert_eq!(out.status.code(), Some(8), "401: {}", explain(&out));
    assert!(ns.iter().all(|n| exists(&n.0)));

    let (out, r2) = gc(PAT);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(exists(&ns[0].0) && !exists(&ns[1].0) && exists(&ns[2].0), "{r2}");
    assert_eq!(r2["github_calls"], 3, "{r2}");
}

/// Teardown's tag deleter for GHCR, through GitHub Packages on the double: the tags and their
/// digests as the package versions list them; deleting a digest deletes its version; a
/// repository on another registry gets no GHCR deleter.
#[tokio::test]
async fn double_ghcr_tag_deleter_works_on_package_versions() {
    use prpod::ops::github_sources::GhcrTags;
    use prpod::ops::teardown::TagDeleter;
    let d = double();
    d.add_package_version("web", "sha256:aa", &["main", "cache-main"]);
    d.add_package_version("web", "sha256:bb", &["pr-7", "sha-0123456789ab"]);
    let tags = GhcrTags::for_repository(client(&d), "ghcr.io/acme/web").await.unwrap().expect("a GHCR repository");
    assert_eq!(tags.repository(), "ghcr.io/acme/web");
    let map = tags.tag_digests().await.unwrap();
    assert_eq!(map.get("pr-7").map(String::as_str), Some("sha256:bb"));
    assert_eq!(map.get("main").map(String::as_str), Some("sha256:aa"));
    assert!(tags.delete_digest("sha256:bb", &["pr-7".into()]).await.unwrap());
    assert!(!tags.delete_digest("sha256:bb", &["pr-7".into()]).await.unwrap(), "gone already");
    let left: Vec<String> = d.package_versions("web").into_iter().map(|v| v.1).collect();
    assert_eq!(left, ["sha256:aa"]);
    assert!(GhcrTags::for_repository(client(&d), "registry.example/acme/web").await.unwrap().is_none());
}
