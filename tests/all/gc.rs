//! `prpod gc` and sleep/wake against the world (issue 16): a TTL collects an old preview and
//! leaves a fresh one; a closed list collects exactly the closed PR; more than `max_share` at
//! once is refused (exit 7, nothing deleted); 50 previews with one failing: 49 processed and the
//! report names the one (with the wall time and the Kubernetes API calls at 10 and 50); sleep
//! then wake restores the replicas and the page answers again.

use std::time::Instant;

use prpod_test_support::{unique_name, world};
use serde_json::Value;

use crate::deploy::NamespaceGuard;
use crate::json;
use crate::run::{Preview, build_example, explain, fake_sha, pages};

/// `n` preview namespaces of repository `repo` made directly (no Helm), updated `age_hours`
/// ago, as prpod labels and annotates them. Returns their names (deleted on drop).
pub fn previews(repo: &str, first_pr: u64, n: u64, age_hours: i64) -> Vec<NamespaceGuard> {
    let w = world();
    let updated = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_hours(age_hours))
        .unwrap();
    let label = prpod::phases::preview::label_value(repo);
    let mut docs = String::from("apiVersion: v1\nkind: List\nitems:\n");
    let mut guards = Vec::new();
    for pr in first_pr..first_pr + n {
        let ns = format!("{}-pr-{pr}", repo.rsplit('/').next().unwrap());
        docs.push_str(&format!(
            "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: {ns}\n    labels:\n      \
             app.kubernetes.io/managed-by: prpod\n      prpod.dev/repository: {label}\n      prpod.dev/pr: \"{pr}\"\n      \
             prpod.dev/release: {ns}\n    annotations:\n      prpod.dev/repository: {repo}\n      \
             prpod.dev/branch: feature/x\n      prpod.dev/updated: \"{updated}\"\n"
        ));
        guards.push(NamespaceGuard(ns));
    }
    w.kubectl_apply("default", &docs);
    guards
}

fn gc(p: &Preview, repo: &str, extra: &[&str]) -> (std::process::Output, Value) {
    let mut args = vec!["--output", "json", "gc", "--repository", repo];
    args.extend(extra);
    let out = p.prpod(&args);
    let r = json(&out);
    (out, r)
}

fn exists(ns: &str) -> bool {
    let out = world().kubectl(["get", "ns", ns, "-o", "jsonpath={.status.phase}"]);
    out.status.success() && String::from_utf8_lossy(&out.stdout) == "Active"
}

fn entry<'a>(r: &'a Value, ns: &str) -> &'a Value {
    r["previews"].as_array().unwrap().iter().find(|e| e["namespace"] == ns).unwrap_or_else(|| panic!("{ns}: {r}"))
}

#[test]
fn gc_ttl_collects_an_old_preview_and_leaves_a_fresh_one() {
    let repo = unique_name("prpod-test/gc-ttl");
    let p = Preview::new(false, &repo, "\n[lifecycle]\nttl = \"2d\"\n");
    let old = previews(&repo, 1, 1, 72);
    let fresh = previews(&repo, 2, 1, 1);
    let kept = previews(&repo, 3, 1, 72);
    world().kubectl_ok(["label", "ns", &kept[0].0, "prpod.dev/keep=true"]);
    // A dry run changes nothing.
    let (out, r) = gc(&p, &repo, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(entry(&r, &old[0].0)["outcome"], "would", "{r}");
    assert!(exists(&old[0].0));

    let (out, r) = gc(&p, &repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(
        (entry(&r, &old[0].0)["action"].as_str(), entry(&r, &old[0].0)["outcome"].as_str()),
        (Some("collect"), Some("done")),
        "{r}"
    );
    assert_eq!(entry(&r, &fresh[0].0)["action"], "keep", "{r}");
    assert_eq!(entry(&r, &kept[0].0)["why"], "labelled prpod.dev/keep", "{r}");
    assert!(!exists(&old[0].0) && exists(&fresh[0].0) && exists(&kept[0].0));
}

#[test]
fn gc_collects_closed_prs_and_refuses_more_than_max_share() {
    let repo = unique_name("prpod-test/gc-closed");
    let p = Preview::new(false, &repo, "");
    let ns = previews(&repo, 1, 4, 1);
    // Three of four closed at once: 75% > 50%: nothing is collected, exit 7.
    let (out, r) = gc(&p, &repo, &["--closed", "1,2,3"]);
    assert_eq!(out.status.code(), Some(7), "{}", explain(&out));
    assert!(r["refused"].as_str().unwrap().contains("max_share"), "{r}");
    assert!(ns.iter().all(|n| exists(&n.0)));
    // One closed, named with its repository: collected.
    let (out, r) = gc(&p, &repo, &["--closed", &format!("{repo}#2")]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(entry(&r, &ns[1].0)["why"], "its PR is closed", "{r}");
    assert!(exists(&ns[0].0) && !exists(&ns[1].0) && exists(&ns[2].0));
}

/// One sweep over `n` previews of which the first is locked by a live foreign run.
fn sweep(n: u64) -> (f64, u64, Value) {
    let w = world();
    let repo = unique_name(&format!("prpod-test/gc{n}"));
    let p = Preview::new(false, &repo, "\n[lifecycle]\nttl = \"1d\"\nmax_share = 100\n");
    let ns = previews(&repo, 1, n, 48);
    let now = k8s_openapi::jiff::Timestamp::now();
    w.kubectl_apply(
        &ns[0].0,
        &format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: prpod-deploy-{}\nspec:\n  \
             holderIdentity: prpod/elsewhere/1/abc\n  leaseDurationSeconds: 3600\n  acquireTime: \"{now:.6}\"\n  \
             renewTime: \"{now:.6}\"\n",
            ns[0].0
        ),
    );
    let started = Instant::now();
    let (out, r) = gc(&p, &repo, &["--timeout", "2s"]);
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(4), "{}", explain(&out));
    let done = r["previews"].as_array().unwrap().iter().filter(|e| e["outcome"] == "done").count() as u64;
    assert_eq!(done, n - 1, "{r}");
    assert_eq!(r["failed"], serde_json::json!([ns[0].0]), "{r}");
    assert!(entry(&r, &ns[0].0)["error"].as_str().unwrap().contains("deploy lock"), "{r}");
    assert!(exists(&ns[0].0) && !exists(&ns[n as usize - 1].0));
    (wall, r["kube_calls"].as_u64().unwrap(), r)
}

#[test]
fn gc_of_50_previews_with_one_failing_processes_49_and_names_the_one() {
    let (w10, c10, _) = sweep(10);
    let (w50, c50, _) = sweep(50);
    eprintln!(
        "gc: 10 previews {w10:.1}s {c10} Kubernetes calls ({:.1}/preview); 50 previews {w50:.1}s {c50} calls ({:.1}/preview)",
        c10 as f64 / 10.0,
        c50 as f64 / 50.0
    );
    // Flat: the per-preview cost at 50 is not above the one at 10 (the fixed part is shared).
    assert!(c50 as f64 / 50.0 <= c10 as f64 / 10.0 + 0.5, "{c10} at 10, {c50} at 50");
}

#[test]
fn sleep_then_wake_restores_the_replicas_and_the_page_answers() {
    let w = world();
    let repo = unique_name("prpod-test/sleep");
    // A repository of its own: gc sweeps only its previews.
    let p = Preview::new(false, &repo, "\n[lifecycle]\nsleep_after = \"1h\"\n")
        .of_repository(&format!("acme/{}", unique_name("sleepy")));
    let sha = fake_sha("sleep");
    let image = build_example(w, &repo, &sha, false);
    let out = p.deploy(&image, &sha, &["--replicas", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let replicas = || w.kubectl_ok(["get", "deploy", "-n", &p.ns, "-o", "jsonpath={.items[0].spec.replicas}"]);
    assert_eq!(replicas(), "2");
    let mut status = vec!["--output".to_string(), "json".into(), "status".into()];
    status.extend(p.pr_flags());
    let out = p.prpod(&status.iter().map(String::as_str).collect::<Vec<_>>());
    let l = &json(&out)["lifecycle"];
    assert!(l["state"] == "awake" && l["sleeps_at"].is_string() && l["collected_at"].is_null(), "{l}");
    // Nobody updated it for two hours.
    let then =
        k8s_openapi::jiff::Timestamp::now().checked_sub(k8s_openapi::jiff::SignedDuration::from_hours(2)).unwrap();
    w.kubectl_ok(["annotate", "ns", &p.ns, "--overwrite", &format!("prpod.dev/updated={then}")]);
    let git_repo = p.git_repo.clone();
    let (out, r) = gc(&p, &git_repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(entry(&r, &p.ns)["action"], "sleep", "{r}");
    assert_eq!(replicas(), "0");
    let labels = w.kubectl_ok(["get", "ns", &p.ns, "-o", "jsonpath={.metadata.labels}"]);
    assert!(labels.contains(r#""prpod.dev/asleep":"true""#), "{labels}");
    // `status` says so.
    let mut args = vec!["--output".to_string(), "json".into(), "status".into()];
    args.extend(p.pr_flags());
    let out = p.prpod(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let l = &json(&out)["lifecycle"];
    assert_eq!(l["state"], "asleep", "{l}");
    assert!(l["updated"].as_str().is_some() && l["sleeps_at"].is_null(), "{l}");
    // A second sweep leaves a sleeping preview alone.
    let (_, r) = gc(&p, &git_repo, &[]);
    assert_eq!(entry(&r, &p.ns)["why"], "asleep", "{r}");

    // Someone labels it: the next sweep wakes it.
    w.kubectl_ok(["label", "ns", &p.ns, "prpod.dev/wake="]);
    let (out, r) = gc(&p, &git_repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(
        (entry(&r, &p.ns)["action"].as_str(), entry(&r, &p.ns)["outcome"].as_str()),
        (Some("wake"), Some("done"))
    );
    assert_eq!(replicas(), "2");
    assert_eq!(pages(&p.ns).len(), 2);
    let labels = w.kubectl_ok(["get", "ns", &p.ns, "-o", "jsonpath={.metadata.labels}"]);
    assert!(!labels.contains("prpod.dev/wake") && !labels.contains("prpod.dev/asleep"), "{labels}");
    // And to sleep again, for `prpod wake`.
    w.kubectl_ok(["annotate", "ns", &p.ns, "--overwrite", &format!("prpod.dev/updated={then}")]);
    let (_, r) = gc(&p, &git_repo, &[]);
    assert_eq!(entry(&r, &p.ns)["action"], "sleep", "{r}");
    assert_eq!(replicas(), "0");

    let mut args = vec!["--output".to_string(), "json".into(), "wake".into()];
    args.extend(p.pr_flags());
    let out = p.prpod(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(json(&out)["state"], "woken");
    assert_eq!(replicas(), "2");
    let served = pages(&p.ns);
    assert!(served.len() == 2 && served.iter().all(|s| s.contains(&sha)), "{served:?}");
    let labels = w.kubectl_ok(["get", "ns", &p.ns, "-o", "jsonpath={.metadata.labels}"]);
    assert!(!labels.contains("prpod.dev/asleep"), "{labels}");

    // Asleep again; with `wake_on_push = false` a deploy refuses, changing nothing ...
    w.kubectl_ok(["annotate", "ns", &p.ns, "--overwrite", &format!("prpod.dev/updated={then}")]);
    let (_, r) = gc(&p, &git_repo, &[]);
    assert_eq!(entry(&r, &p.ns)["action"], "sleep", "{r}");
    assert_eq!(replicas(), "0");
    let mut deploy = vec!["--output".to_string(), "json".into(), "deploy".into()];
    deploy.extend(p.context(&sha));
    deploy.extend(["--image".into(), image.clone()]);
    let out = p
        .command(&deploy.iter().map(String::as_str).collect::<Vec<_>>())
        .env("PRPOD_LIFECYCLE_WAKE_ON_PUSH", "false")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(crate::stderr(&out).contains("wake_on_push = false"), "{}", explain(&out));
    assert_eq!(replicas(), "0");
    // ... and by default (wake_on_push) the next deploy wakes it before Helm.
    let out = p.deploy(&image, &sha, &["--replicas", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(replicas(), "2");
    let labels = w.kubectl_ok(["get", "ns", &p.ns, "-o", "jsonpath={.metadata.labels}"]);
    assert!(!labels.contains("prpod.dev/asleep"), "{labels}");
    assert_eq!(pages(&p.ns).len(), 2);
}

/// A closed-PR source that cannot answer (the GitHub API down): nothing is collected for being
/// closed, the PRs are listed as unknown, exit 8.
#[test]
fn gc_acts_on_no_pr_whose_state_is_unknown() {
    use std::collections::BTreeMap;

    use prpod::ops::gc::{ClosedPrs, GcRequest, PrState};

    struct Down;
    #[async_trait::async_trait]
    impl ClosedPrs for Down {
        async fn states(&self, prs: &[(String, u64)]) -> BTreeMap<(String, u64), PrState> {
            prs.iter().map(|p| (p.clone(), PrState::Unknown("HTTP 502 from the API".into()))).collect()
        }
    }
    let repo = unique_name("prpod-test/gc-unknown");
    let ns = previews(&repo, 1, 3, 1);
    let mut config = prpod::config::Config::default();
    config.deploy.kubeconfig = Some(world().kubeconfig.clone());
    let req = GcRequest { repository: Some(repo), closed: Some(Box::new(Down)), dry_run: false, tags: None };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let r = rt.block_on(prpod::ops::gc::gc(&config, req, &prpod::report::Reporter::capture())).unwrap();
    assert_eq!(r.exit_code(), 8, "{r:?}");
    assert_eq!(r.unknown.len(), 3, "{r:?}");
    assert!(r.previews.iter().all(|e| e.action == "keep"), "{r:?}");
    assert!(ns.iter().all(|n| exists(&n.0)));
}

/// `keep_tags_for`: `sha-*` digests older than it that no other tag and no workload uses are
/// deleted; one shared with a PR's primary tag and one a pod runs stay; younger ones stay.
#[test]
fn gc_deletes_old_sha_tags_nothing_uses() {
    use prpod::clients::registry::ImageName;

    use crate::teardown::{registry, variant};
    let w = world();
    let repo = unique_name("prpod-test/old-tags");
    let p = Preview::new(false, &repo, "\n[lifecycle]\nkeep_tags_for = \"1d\"\n");
    let sha = fake_sha("old-tags");
    let image = build_example(w, &repo, &sha, false);
    let digest = image.rsplit_once('@').unwrap().1.to_string();
    let name = ImageName::parse(&format!("{}/{repo}", w.registry_tls.host_pod)).unwrap().value;
    let client = registry();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let running = rt.block_on(async {
        variant(&client, &name, &digest, "a", &["sha-aaaaaaaaaaaa"]).await;
        variant(&client, &name, &digest, "b", &["sha-bbbbbbbbbbbb", "pr-9"]).await;
        variant(&client, &name, &digest, "c", &["sha-cccccccccccc"]).await
    });
    let user = unique_name("old-tags-user");
    let _guard = NamespaceGuard(user.clone());
    w.kubectl_ok(["create", "namespace", &user]);
    w.kubectl_apply(
        &user,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: runs-c\nspec:\n  terminationGracePeriodSeconds: 0\n  \
             containers:\n  - name: web\n    image: {}/{repo}@{running}\n",
            w.registry_tls.host_pod
        ),
    );
    let tags = |rt: &tokio::runtime::Runtime| -> Vec<String> {
        rt.block_on(client.tag_digests(&name)).unwrap().into_keys().collect()
    };
    // Younger than a day: all stay.
    let (out, r) = gc(&p, &repo, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(r["old_tags"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(tags(&rt).len(), 5);
    // Older than a second: the two nothing uses go.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = p
        .command(&["--output", "json", "gc", "--repository", &repo])
        .env("PRPOD_LIFECYCLE_KEEP_TAGS_FOR", "1s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let r = json(&out);
    assert_eq!(r["old_tags"].as_array().unwrap().len(), 2, "{r}");
    let mut want = vec!["pr-9", "sha-bbbbbbbbbbbb", "sha-cccccccccccc"];
    want.sort();
    assert_eq!(tags(&rt), want);
}
