//! `prpod teardown` against the world (issue 16): after a deploy it removes the namespace, the
//! release and the PR's tags; it keeps another PR's tags, the base branch's cache, and a tag
//! whose digest a pod in another namespace runs (reported); a second teardown changes nothing;
//! another repository's namespace is refused.

use std::collections::BTreeMap;

use prpod::clients::registry::{
    CredentialResolver, ImageName, ImageReference, RawManifest, RegistryClient, RegistryOptions, sha256_digest,
};
use prpod_test_support::{unique_name, world};
use serde_json::Value;

use crate::deploy::NamespaceGuard;
use crate::json;
use crate::run::{Preview, build_example, explain, fake_sha};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A client of the TLS registry with the world's credentials.
pub fn registry() -> RegistryClient {
    let reg = &world().registry_tls;
    let creds = CredentialResolver::anonymous().with_secret(
        &reg.host_pod,
        reg.user.as_ref().unwrap(),
        reg.password.clone().unwrap(),
        "the test",
    );
    let opts = RegistryOptions { ca_file: reg.ca.clone(), ..RegistryOptions::default() };
    RegistryClient::new(opts, creds).unwrap()
}

/// Pushes a variant of `source`'s manifest (same blobs, an annotation `n`) under `tags`:
/// another digest at no build cost. Returns its digest.
pub async fn variant(client: &RegistryClient, name: &ImageName, source: &str, n: &str, tags: &[&str]) -> String {
    let r = ImageReference { name: name.clone(), tag: None, digest: Some(source.to_string()) };
    let m = client.fetch_manifest(&r).await.unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    v["annotations"] = serde_json::json!({ "test.prpod.dev/variant": n });
    let bytes = serde_json::to_vec(&v).unwrap();
    let raw = RawManifest { digest: sha256_digest(&bytes), bytes, media_type: m.media_type.clone() };
    for t in tags {
        client.put_manifest(name, t, &raw).await.unwrap();
    }
    raw.digest
}

/// Tags `digest` with `tags`.
pub async fn tag(client: &RegistryClient, name: &ImageName, digest: &str, tags: &[&str]) {
    let r = ImageReference { name: name.clone(), tag: None, digest: Some(digest.to_string()) };
    let m = client.fetch_manifest(&r).await.unwrap();
    for t in tags {
        client.put_manifest(name, t, &m).await.unwrap();
    }
}

async fn tags_of(client: &RegistryClient, name: &ImageName) -> BTreeMap<String, String> {
    client.tag_digests(name).await.unwrap()
}

#[test]
fn teardown_removes_the_prs_preview_and_tags_and_keeps_what_others_use() {
    let w = world();
    let repo = unique_name("prpod-test/teardown");
    let p = Preview::new(false, &repo, "");
    let sha = fake_sha("teardown");
    let old = fake_sha("teardown-old");
    let image = build_example(w, &repo, &sha, false);
    let digest = image.rsplit_once('@').unwrap().1.to_string();
    let name = ImageName::parse(&format!("{}/{repo}", w.registry_tls.host_pod)).unwrap().value;
    let client = registry();
    let pr = p.pr.to_string();
    let (other_pr, other_ns) = (format!("pr-{}", p.pr + 1), unique_name("teardown-user"));
    let _user_guard = NamespaceGuard(other_ns.clone());
    let old_tag = format!("sha-{}", &old[..12]);
    let in_use = rt().block_on(async {
        // What the run would have pushed: primary, branch, sha, cache.
        tag(&client, &name, &digest, &[&format!("pr-{pr}"), "br-feature-preview"]).await;
        variant(&client, &name, &digest, "cache", &[&format!("cache-pr-{pr}")]).await;
        // Another PR's tag and the base branch's cache: not this PR's.
        variant(&client, &name, &digest, "other", &[&other_pr]).await;
        variant(&client, &name, &digest, "base", &["cache-br-main"]).await;
        // An older commit of this PR that a pod in another namespace runs.
        variant(&client, &name, &digest, "old", &[&old_tag]).await
    });
    w.kubectl_ok(["create", "namespace", &other_ns]);
    w.kubectl_apply(
        &other_ns,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: runs-old\nspec:\n  terminationGracePeriodSeconds: 0\n  \
             containers:\n  - name: web\n    image: {}/{repo}@{in_use}\n",
            w.registry_tls.host_pod
        ),
    );

    let out = p.deploy(&image, &sha, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    // The deploy recorded its commit; the older one is recorded as a teardown would find it.
    let commits = w.kubectl_ok(["get", "ns", &p.ns, "-o", "jsonpath={.metadata.annotations.prpod\\.dev/commits}"]);
    assert_eq!(commits.trim(), &sha[..12]);
    w.kubectl_ok(["annotate", "ns", &p.ns, "--overwrite", &format!("prpod.dev/commits={} {}", &old[..12], &sha[..12])]);

    let mut args: Vec<String> = vec!["--output".into(), "json".into(), "teardown".into()];
    args.extend(p.pr_flags());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();

    // Dry: says everything, changes nothing.
    let mut dry = argv.clone();
    dry.push("--dry-run");
    let out = p.prpod(&dry);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let r = json(&out);
    assert_eq!(r["namespace"], "would delete", "{r}");
    assert_eq!(r["deleted"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(rt().block_on(tags_of(&client, &name)).len(), 7);

    let out = p.prpod(&argv);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let r = json(&out);
    assert_eq!((r["namespace"].as_str(), r["helm_release"].as_str()), (Some("deleted"), Some("uninstalled")), "{r}");
    let kept = r["kept"].as_array().unwrap();
    assert!(
        kept.len() == 1
            && kept[0]["tag"] == old_tag.as_str()
            && kept[0]["why"].as_str().unwrap().contains(&format!("Pod {other_ns}/runs-old")),
        "{r}"
    );
    let left: Vec<String> = rt().block_on(tags_of(&client, &name)).into_keys().collect();
    let mut want = vec!["cache-br-main".to_string(), old_tag.clone(), other_pr.clone()];
    want.sort();
    assert_eq!(left, want);
    let phase = w.kubectl(["get", "ns", &p.ns, "-o", "jsonpath={.status.phase}"]);
    assert!(!phase.status.success() || String::from_utf8_lossy(&phase.stdout) == "Terminating");
    eprintln!("teardown wall time: {}s", r["seconds"]);

    // Again: nothing left to do.
    let out = p.prpod(&argv);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let r = json(&out);
    assert!(r["deleted"].as_array().unwrap().is_empty() && r["helm_release"] == "absent", "{r}");
    assert_eq!(rt().block_on(tags_of(&client, &name)).len(), 3);
}

#[test]
fn teardown_refuses_another_repositorys_namespace() {
    let w = world();
    let p = Preview::new(false, "prpod-test/unused", "");
    let _guard = NamespaceGuard(p.ns.clone());
    // acme/hello-web's preview of PR n ...
    w.kubectl_ok(["create", "namespace", &p.ns]);
    w.kubectl_ok([
        "label",
        "ns",
        &p.ns,
        "app.kubernetes.io/managed-by=prpod",
        "prpod.dev/repository=acme.hello-web",
        &format!("prpod.dev/pr={}", p.pr),
    ]);
    // ... torn down as other-org/hello-web's PR n (the same names under the default policy).
    let q = Preview::new(false, "prpod-test/unused", "").of_repository("other-org/hello-web");
    let mut args: Vec<String> = vec!["teardown".into(), "--repo-url".into(), w.git.repo_url("other-org/hello-web")];
    args.extend(["--pr".into(), p.pr.to_string()]);
    let out = q.prpod(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(crate::stderr(&out).contains("acme.hello-web PR #"), "{}", explain(&out));
    let ann = w.kubectl_ok(["get", "ns", &p.ns, "-o", "jsonpath={.metadata.annotations}"]);
    assert!(!ann.contains("prpod.dev/closed"), "nothing was written: {ann}");
}

#[test]
fn a_closed_preview_refuses_a_late_run() {
    use prpod::clients::helm::KubeTarget;
    use prpod::clients::kube::Kube;
    use prpod::model::ReleaseTarget;
    use prpod::phases::deploy::{self, DeployConfig};
    let w = world();
    let ns = unique_name("closed");
    let _guard = NamespaceGuard(ns.clone());
    let release = ReleaseTarget { name: ns.clone(), namespace: ns.clone() };
    let ctx = crate::context(Some(5), "feature/x");
    rt().block_on(async {
        let kube = Kube::connect(&KubeTarget { kubeconfig: Some(w.kubeconfig.clone()), context: None }).await.unwrap();
        deploy::prepare_namespace(&kube, &ctx, &release, None, &DeployConfig::default()).await.unwrap();
        w.kubectl_ok(["annotate", "ns", &ns, "prpod.dev/closed=2026-01-01T00:00:00Z"]);
        let e = deploy::prepare_namespace(&kube, &ctx, &release, None, &DeployConfig::default()).await.unwrap_err();
        assert!(format!("{e:#}").contains("was closed at 2026-01-01T00:00:00Z"), "{e:#}");
        assert_eq!(prpod::error::exit_code_for(&e), 2);
    });
}

/// synchronize(B), then synchronize(A) with A the parent of B: A exits superseded (6) before
/// Helm, and the release history holds B's install only.
#[test]
fn an_older_commit_of_the_pr_is_superseded_by_ancestry() {
    let w = world();
    let name = format!("acme/{}", unique_name("superseded"));
    let url = w.git.publish(&crate::repo_root().join("examples/hello-web"), &name);
    let branch = crate::run::PrBranch::clone(&url, "feature/s");
    let a = branch.commit("A");
    let b = branch.commit("B");
    branch.push();
    let repo = unique_name("prpod-test/superseded");
    let p = Preview::new(false, &repo, "").of_repository(&name);
    // A clone cache of the test's own, and history enough to see A below B.
    std::fs::write(
        p.dir.path().join("prpod.toml"),
        format!(
            "[source]\nusername = \"{}\"\ndepth = 10\n\n[image]\nrepository = \"{}\"\nbuild_args = {{ BASE = \"{}\" }}\n\n\
             [build]\nbackend = \"native\"\n\n[deploy]\ntimeout = \"90s\"\nset = {{ terminationGracePeriodSeconds = 1 }}\n",
            w.git.user,
            p.repository,
            w.web_image_tls.replacen(&w.registry_tls.host, &w.registry_tls.host_pod, 1)
        ),
    )
    .unwrap();
    let cache = prpod_test_support::TempDir::new("clone-cache");
    let run = |sha: &str| {
        let mut args = vec!["--output".to_string(), "json".into(), "run".into(), "--repo-url".into(), url.clone()];
        args.extend(["--pr".into(), p.pr.to_string(), "--branch".into(), "feature/s".into(), "--sha".into()]);
        args.push(sha.into());
        let out = p
            .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .env("PRPOD_CACHE_DIR", cache.path())
            .output()
            .unwrap();
        crate::run::assert_no_secrets(&out.stdout, "stdout");
        crate::run::assert_no_secrets(&out.stderr, "stderr");
        out
    };
    let out = run(&b);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let out = run(&a);
    assert_eq!(out.status.code(), Some(6), "{}", explain(&out));
    assert!(crate::stderr(&out).contains("superseded"), "{}", explain(&out));
    let home = prpod_test_support::HelmHome::new();
    let hist = home
        .command(&w.helm, &w.kubeconfig)
        .args(["history", &p.ns, "--namespace", &p.ns, "--output", "json"])
        .output()
        .unwrap();
    let h: Value = serde_json::from_slice(&hist.stdout).unwrap();
    assert_eq!(h.as_array().unwrap().len(), 1, "{h}");
    let deployed =
        w.kubectl_ok(["get", "ns", &p.ns, "-o", "jsonpath={.metadata.annotations.prpod\\.dev/deployed-commit}"]);
    assert_eq!(deployed, b);
}
