//! `prpod dispatch` against the world's Kubernetes 1.20 node: the PR's namespace with its RBAC
//! (the Job's ServiceAccount may do a run's verbs in its namespace and nothing else), the
//! restricted pod spec (1.20 has no Pod Security admission: the spec is checked against the
//! profile's rules here), no secret in the Job, the ConfigMap or the pod, the cache PVC bound to
//! a static hostPath PV (the node has no provisioner), a newer commit superseding a running Job,
//! `--reset`, another PR's namespace refused; and the job image built by prpod's native builder
//! running `prpod run` for the example PR in a real Job.
//!
//! The RBAC tests run the Job with the world's pause image (it runs until deleted), so the
//! Job's objects can be inspected while it runs; `dispatch` is killed once the Job exists.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prpod_test_support::{TempDir, unique_name, wait_for, world};
use serde_json::Value;

use crate::run::{Preview, assert_no_secrets, explain};

/// `kubectl auth can-i VERB RESOURCE -n NS --as=SA`: the cluster's answer (impersonation).
fn can_i(sa: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let (resource, sub) = resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
    let mut args = vec!["auth".to_string(), "can-i".into(), verb.into(), resource.into(), "-n".into(), ns.into()];
    args.push(format!("--as={sa}"));
    if let Some(s) = sub {
        args.push(format!("--subresource={s}"));
    }
    let out = world().kubectl(&args);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// A real request as `sa` (impersonated): whether the API server allowed it.
fn allowed(sa: &str, args: &[&str]) -> bool {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.push(format!("--as={sa}"));
    let out = world().kubectl(&a);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(err.contains("Forbidden") || err.contains("forbidden"), "{args:?} failed otherwise: {err}");
    }
    out.status.success()
}

/// `prpod dispatch` for `p`'s PR at `sha`, spawned (it follows the Job's log until the Job ends).
fn spawn_dispatch(p: &Preview, sha: &str, extra: &[&str]) -> Child {
    let mut args: Vec<String> = vec!["dispatch".into()];
    args.extend(p.context(sha));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    p.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn prpod dispatch")
}

/// The dispatch Jobs in `ns`: name and commit label.
fn jobs(ns: &str) -> Vec<(String, String)> {
    let out =
        world().kubectl_ok(["get", "jobs", "-n", ns, "-l", "app.kubernetes.io/component=prpod-dispatch", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
        .map(|j| {
            (
                j["metadata"]["name"].as_str().unwrap().to_string(),
                j["metadata"]["labels"]["prpod.dev/commit"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits until `ns` holds exactly one dispatch Job, for `sha`, with a running pod; its name.
fn wait_running(ns: &str, sha: &str, child: &mut Child) -> String {
    wait_running_other_than(ns, sha, child, "")
}

/// [`wait_running`], for a Job whose uid is not `old_uid`.
fn wait_running_other_than(ns: &str, sha: &str, child: &mut Child, old_uid: &str) -> String {
    wait_for("the dispatched Job's pod to run", Duration::from_secs(90), || {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("dispatch exited ({st}) before its Job ran: {err}");
        }
        let j = jobs(ns);
        if j.len() != 1 || j[0].1 != sha {
            return None;
        }
        let uid = world().kubectl(["get", "job", &j[0].0, "-n", ns, "-o", "jsonpath={.metadata.uid}"]);
        if !uid.status.success() || String::from_utf8_lossy(&uid.stdout) == old_uid {
            return None;
        }
        let phase = world().kubectl_ok([
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            &format!("job-name={}", j[0].0),
            "-o",
            "jsonpath={.items[*].status.phase}",
        ]);
        (phase.trim() == "Running").then(|| j[0].0.clone())
    })
}

/// A static PersistentVolume (hostPath, its own StorageClass name), deleted on drop.
struct StaticPv {
    name: String,
    _dir: TempDir,
}

impl StaticPv {
    fn new(class: &str) -> StaticPv {
        let dir = TempDir::new("dispatch-pv");
        // the pod runs as UID 65532; hostPath gets no fsGroup
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let name = class.to_string();
        world().kubectl_apply(
            "default",
            &format!(
                "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  \
                 accessModes: [ReadWriteOnce]\n  storageClassName: {class}\n  persistentVolumeReclaimPolicy: Retain\n  \
                 hostPath: {{path: \"{}\", type: Directory}}\n",
                dir.path().display()
            ),
        );
        StaticPv { name, _dir: dir }
    }
}

impl Drop for StaticPv {
    fn drop(&mut self) {
        let _ = world().kubectl(["delete", "pv", &self.name, "--wait=false", "--ignore-not-found"]);
    }
}

/// The Job's RBAC, pod spec, Secret handling and cache volume, then a newer commit superseding
/// the running Job, `--reset` replacing it, and another PR's namespace refused.
#[test]
fn dispatch_sets_up_a_namespace_scoped_job_supersedes_resets_and_refuses_foreign_namespaces() {
    let w = world();
    let class = unique_name("prpod-dispatch-pv").replace(['/', '_'], "-").to_lowercase();
    let pv = StaticPv::new(&class);
    let p = Preview::new(
        false,
        &unique_name("prpod-test/dispatch"),
        &format!(
            "[dispatch]\nimage = \"{}\"\ncache_volume = {{ size = \"1Gi\", storage_class = \"{class}\" }}\n",
            w.pause_image
        ),
    );
    let sa = format!("system:serviceaccount:{}:prpod-run", p.ns);
    let sha1 = crate::run::fake_sha("dispatch1");

    // --dry-run: the manifests, no secret value, nothing in the cluster
    let mut args = vec!["--output".to_string(), "json".into(), "dispatch".into(), "--dry-run".into()];
    args.extend(p.context(&sha1));
    let out = p.prpod(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let plan = crate::json(&out);
    let kinds: Vec<&str> = plan["manifests"].as_array().unwrap().iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Secret", "PersistentVolumeClaim", "Job"]);
    assert!(!w.kubectl(["get", "namespace", &p.ns]).status.success(), "a dry run created the namespace");

    let mut child = spawn_dispatch(&p, &sha1, &[]);
    let job1 = wait_running(&p.ns, &sha1, &mut child);
    child.kill().unwrap();
    let _ = child.wait();

    // the namespace is the preview's, with the ownership labels
    let labels: Value =
        serde_json::from_str(&w.kubectl_ok(["get", "namespace", &p.ns, "-o", "jsonpath={.metadata.labels}"])).unwrap();
    assert_eq!(labels["prpod.dev/pr"], p.pr.to_string());
    assert_eq!(labels["app.kubernetes.io/managed-by"], "prpod");

    // the Job's ServiceAccount: a run's verbs in its namespace, nothing beyond
    for (verb, res) in [
        ("get", "secrets"),
        ("create", "secrets"),
        ("create", "deployments.apps"),
        ("patch", "services"),
        ("create", "leases.coordination.k8s.io"),
        ("watch", "pods"),
        ("get", "pods/log"),
        ("get", "endpoints"),
    ] {
        assert!(can_i(&sa, verb, res, &p.ns), "the Job cannot {verb} {res} in its namespace");
    }
    for (verb, res, ns) in [
        ("create", "namespaces", p.ns.as_str()),
        ("create", "roles.rbac.authorization.k8s.io", p.ns.as_str()),
        ("create", "rolebindings.rbac.authorization.k8s.io", p.ns.as_str()),
        ("create", "clusterroles.rbac.authorization.k8s.io", p.ns.as_str()),
        ("create", "pods", p.ns.as_str()),
        ("create", "jobs.batch", p.ns.as_str()),
        ("get", "secrets", "default"),
        ("create", "deployments.apps", "default"),
        ("delete", "namespaces", p.ns.as_str()),
    ] {
        assert!(!can_i(&sa, verb, res, ns), "the Job may {verb} {res} in {ns}");
    }
    // real requests: its own namespace is readable, another is not
    assert!(allowed(&sa, &["get", "namespace", &p.ns]));
    assert!(!allowed(&sa, &["get", "namespace", "default"]));
    assert!(!allowed(&sa, &["create", "namespace", &format!("{}-x", p.ns)]));
    let binding = w.kubectl_ok([
        "get",
        "rolebindings",
        "-n",
        &p.ns,
        "-o",
        "jsonpath={.items[*].roleRef.kind}/{.items[*].roleRef.name}",
    ]);
    assert_eq!(binding.trim(), "Role/prpod-run", "bound to its Role alone");

    // the pod spec passes the restricted profile's rules; the pod runs as the non-root user
    let job: k8s_openapi::api::batch::v1::Job =
        serde_json::from_str(&w.kubectl_ok(["get", "job", &job1, "-n", &p.ns, "-o", "json"])).unwrap();
    let spec = job.spec.clone().unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(90 + 20 * 60));
    let pod = spec.template.spec.unwrap();
    assert_eq!(prpod::clients::kube::job::restricted_violations(&pod), Vec::<String>::new());
    assert_eq!(job.metadata.labels.as_ref().unwrap()["prpod.dev/pr"], p.pr.to_string());
    let uid = w.kubectl_ok([
        "get",
        "pods",
        "-n",
        &p.ns,
        "-l",
        &format!("job-name={job1}"),
        "-o",
        "jsonpath={.items[0].spec.securityContext.runAsUser}",
    ]);
    assert_eq!(uid.trim(), "65532");

    // secrets only in the Secret (files), nowhere else
    let everything = w.kubectl_ok(["get", "jobs,configmaps,pods", "-n", &p.ns, "-o", "json"]);
    assert_no_secrets(everything.as_bytes(), "the Job, the ConfigMap and the pod");
    let cm = w.kubectl_ok(["get", "configmap", "prpod-run-config", "-n", &p.ns, "-o", "jsonpath={.data.prpod\\.toml}"]);
    assert!(
        cm.contains("/var/run/secrets/prpod/registry-password") && cm.contains("/var/run/secrets/prpod/git-token"),
        "{cm}"
    );
    let keys = w.kubectl_ok(["get", "secret", "prpod-run-credentials", "-n", &p.ns, "-o", "jsonpath={.data}"]);
    for k in ["git-token", "registry-password"] {
        assert!(keys.contains(k), "{k} not in the Secret: {keys}");
    }
    let env: Value = serde_json::from_str(&w.kubectl_ok([
        "get",
        "job",
        &job1,
        "-n",
        &p.ns,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env}",
    ]))
    .unwrap();
    assert!(env.as_array().unwrap().iter().all(|e| e.get("valueFrom").is_none()), "{env}");

    // the cache PVC is bound to the static hostPath PV
    let bound = w.kubectl_ok([
        "get",
        "pvc",
        "prpod-run-cache",
        "-n",
        &p.ns,
        "-o",
        "jsonpath={.status.phase}/{.spec.volumeName}",
    ]);
    assert_eq!(bound.trim(), format!("Bound/{}", pv.name));

    // a newer commit supersedes the running Job
    let sha2 = crate::run::fake_sha("dispatch2");
    let mut child = spawn_dispatch(&p, &sha2, &[]);
    let job2 = wait_running(&p.ns, &sha2, &mut child);
    child.kill().unwrap();
    let _ = child.wait();
    assert_ne!(job1, job2);
    assert_eq!(jobs(&p.ns), [(job2.clone(), sha2.clone())], "the older commit's Job is gone");

    // the same commit again: refused while it runs; --reset replaces it
    let mut args = vec!["dispatch".to_string()];
    args.extend(p.context(&sha2));
    let out = p.prpod(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(crate::stderr(&out).contains("--reset"), "{}", explain(&out));
    let before = w.kubectl_ok(["get", "job", &job2, "-n", &p.ns, "-o", "jsonpath={.metadata.uid}"]);
    let mut child = spawn_dispatch(&p, &sha2, &["--reset"]);
    let job3 = wait_running_other_than(&p.ns, &sha2, &mut child, &before);
    child.kill().unwrap();
    let _ = child.wait();
    let after = w.kubectl_ok(["get", "job", &job3, "-n", &p.ns, "-o", "jsonpath={.metadata.uid}"]);
    assert_ne!(before, after, "--reset made a new Job");

    // another PR's namespace (labelled as acme/other PR #1) is refused, naming its owner
    let q = Preview::new(
        false,
        &unique_name("prpod-test/dispatch"),
        &format!("[dispatch]\nimage = \"{}\"\n", w.pause_image),
    );
    w.kubectl_ok(["create", "namespace", &q.ns]);
    w.kubectl_ok([
        "label",
        "namespace",
        &q.ns,
        "app.kubernetes.io/managed-by=prpod",
        "prpod.dev/repository=acme.other",
        "prpod.dev/pr=1",
    ]);
    let mut args = vec!["dispatch".to_string()];
    args.extend(q.context(&sha1));
    let out = q.prpod(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(crate::stderr(&out).contains("belongs to acme.other PR #1"), "{}", explain(&out));
    assert!(
        w.kubectl_ok(["get", "jobs,serviceaccounts,roles", "-n", &q.ns, "-o", "name"])
            .lines()
            .all(|l| !l.contains("prpod-")),
        "something was written into another PR's namespace"
    );
}

/// A ServiceAccount (in a namespace of its own) bound to a ClusterRole of `rights`: the
/// dispatching identity; its kubeconfig. The ClusterRole, its binding and the namespace go on
/// drop.
struct Dispatcher {
    name: String,
    kubeconfig: std::path::PathBuf,
    _dir: TempDir,
}

impl Dispatcher {
    fn new(rights: &[&prpod::clients::kube::ApiRight]) -> Dispatcher {
        let w = world();
        let name = unique_name("prpod-dispatcher").replace(['/', '_'], "-").to_lowercase();
        w.kubectl_ok(["create", "namespace", &name]);
        let dir = TempDir::new("dispatcher");
        let kubeconfig = dir.path().join("kubeconfig");
        let d = Dispatcher { name: name.clone(), kubeconfig: kubeconfig.clone(), _dir: dir };
        d.grant(rights);
        w.kubectl_apply(
            &name,
            &format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: dispatcher}}\n---\n\
                 apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {name}}}\n\
                 subjects: [{{kind: ServiceAccount, name: dispatcher, namespace: {name}}}]\n\
                 roleRef: {{kind: ClusterRole, name: {name}, apiGroup: rbac.authorization.k8s.io}}\n"
            ),
        );
        let secret = wait_for("the dispatcher's token", Duration::from_secs(30), || {
            let out =
                w.kubectl(["get", "serviceaccount", "dispatcher", "-n", &name, "-o", "jsonpath={.secrets[0].name}"]);
            (out.status.success() && !out.stdout.is_empty()).then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        });
        let token = w.kubectl_ok(["get", "secret", &secret, "-n", &name, "-o", "jsonpath={.data.token}"]);
        use base64::Engine;
        let token = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(token.trim()).unwrap()).unwrap();
        prpod_test_support::write_private(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: w, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\n\
                 users: [{{name: d, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: d, context: {{cluster: w, user: d}}}}]\n\
                 current-context: d\n",
                w.kube_api,
                w.kube_ca.display()
            )
            .as_bytes(),
        );
        d
    }

    /// Makes the ClusterRole exactly `rights`.
    fn grant(&self, rights: &[&prpod::clients::kube::ApiRight]) {
        let rules: Vec<String> = rights
            .iter()
            .map(|r| {
                let res = match r.subresource {
                    Some(s) => format!("{}/{s}", r.resource),
                    None => r.resource.to_string(),
                };
                format!("{{apiGroups: [\"{}\"], resources: [\"{res}\"], verbs: [\"{}\"]}}", r.group, r.verb)
            })
            .collect();
        world().kubectl_apply(
            "default",
            &format!(
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {}}}\nrules: [{}]\n",
                self.name,
                rules.join(", ")
            ),
        );
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let w = world();
        let _ = w.kubectl(["delete", "clusterrolebinding,clusterrole", &self.name, "--ignore-not-found"]);
        let _ = w.kubectl(["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"]);
    }
}

/// The dispatching identity needs exactly the README's list: a ServiceAccount bound to a
/// ClusterRole of the rights `dispatch` names ([`job::dispatch_rights`] for a new namespace, and
/// the Job's Role's rights, which it grants) dispatches a PR up to its running Job; with one of
/// its own rights less (`delete jobs.batch`), or one of the Role's (`get endpoints`), dispatch
/// refuses before writing anything, naming the missing right (exit 2).
#[test]
fn the_dispatching_identity_needs_exactly_the_listed_rights() {
    use prpod::clients::kube::job;
    let w = world();
    let p = Preview::new(
        false,
        &unique_name("prpod-test/dispatch"),
        &format!("[dispatch]\nimage = \"{}\"\n", w.pause_image),
    );
    let config = prpod::config::Config::default();
    let role = prpod::ops::dispatch::role_rights(&config);
    let own = job::dispatch_rights(false, false, false);
    let all: Vec<_> = own.iter().chain(role.iter()).copied().collect();
    let d = Dispatcher::new(&all);
    let dispatch = |sha: &str| {
        let mut args = vec!["dispatch".to_string()];
        args.extend(p.context(sha));
        let mut c = p.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        c.env("KUBECONFIG", &d.kubeconfig);
        c
    };
    let refused = |sha: &str, right: &str| {
        let out = dispatch(sha).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
        let err = crate::stderr(&out);
        assert!(err.contains("dispatching identity may not") && err.contains(right), "{right} is not named: {err}");
        assert_no_secrets(&out.stderr, "dispatch's stderr");
        err
    };

    // (the authorizer sees a changed ClusterRole a moment later)
    let sa = format!("system:serviceaccount:{}:dispatcher", d.name);
    let settle = |verb: &str, resource: &str, allowed: bool| {
        wait_for("the ClusterRole to take effect", Duration::from_secs(20), || {
            (can_i(&sa, verb, resource, &p.ns) == allowed).then_some(())
        })
    };

    // one of dispatch's own rights less: refused before the namespace is made
    let less: Vec<_> = all.iter().copied().filter(|r| !(r.verb == "delete" && r.resource == "jobs")).collect();
    d.grant(&less);
    settle("delete", "jobs.batch", false);
    let sha1 = crate::run::fake_sha("rights1");
    refused(&sha1, "delete jobs.batch");
    assert!(!w.kubectl(["get", "namespace", &p.ns]).status.success(), "the refused dispatch made the namespace");
    // one of the Job's Role's less: dispatch could not grant it
    let less: Vec<_> = all.iter().copied().filter(|r| !(r.verb == "get" && r.resource == "endpoints")).collect();
    d.grant(&less);
    settle("delete", "jobs.batch", true);
    settle("get", "endpoints", false);
    let err = refused(&sha1, "get endpoints");
    assert!(err.contains("the Job's Role") && !err.contains("delete jobs.batch"), "{err}");

    // exactly the list: the Job runs
    d.grant(&all);
    settle("get", "endpoints", true);
    let mut child = dispatch(&sha1).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let job = wait_running(&p.ns, &sha1, &mut child);
    child.kill().unwrap();
    let _ = child.wait();
    assert!(job.starts_with(&format!("prpod-pr-{}-", p.pr)), "{job}");
    let bound = w.kubectl_ok(["get", "rolebinding", "prpod-run", "-n", &p.ns, "-o", "jsonpath={.roleRef.name}"]);
    assert_eq!(bound.trim(), "prpod-run");
}

/// The job image, staged by `images/pr-job/build` (with the prpod under test: the debug build,
/// which the script strips) and built by prpod's native builder from the world's git server,
/// pushed to the plain registry (the node pulls from it by its pod-gateway name,
/// 10.244.0.1:47500, with no credentials); `REPOSITORY@DIGEST` and the staged size in bytes.
/// `PRPOD_TEST_JOB_PRPOD` (a `--profile pr-job` prpod) and `PRPOD_TEST_JOB_LIBCURL` (from
/// `images/pr-job/libcurl`) stage those instead, to run the image as the workflow ships it: both
/// cost a build that the suite does not make itself.
fn build_job_image() -> (String, u64) {
    let w = world();
    let stage = TempDir::new("pr-job-stage");
    let dir = stage.path().join("ctx");
    let mut build = Command::new(crate::repo_root().join("images/pr-job/build"));
    build.arg(&dir).arg("--helm").arg(&w.helm).arg("--prpod");
    match std::env::var_os("PRPOD_TEST_JOB_PRPOD") {
        Some(p) => build.arg(p),
        None => build.arg(env!("CARGO_BIN_EXE_prpod")),
    };
    if let Some(lib) = std::env::var_os("PRPOD_TEST_JOB_LIBCURL") {
        build.arg("--libcurl").arg(lib);
    }
    let out = build.output().unwrap();
    assert!(out.status.success(), "images/pr-job/build: {}", explain(&out));
    let size: u64 =
        String::from_utf8_lossy(&Command::new("du").args(["-sb"]).arg(dir.join("rootfs")).output().unwrap().stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
    let name = unique_name("prpod-images/pr-job");
    let url = w.git.publish(&dir, &name);
    let ls = w.git.git_with_token(&w.git.token).args(["ls-remote", &url, "refs/heads/main"]).output().unwrap();
    let sha = String::from_utf8_lossy(&ls.stdout).split_whitespace().next().unwrap().to_string();
    let work = TempDir::new("pr-job-build");
    // (the server packs the context, ~170 MB with the stripped debug prpod, before it answers)
    let repository = format!("{}/prpod-test/pr-job", w.registry_plain.host_pod);
    std::fs::write(
        work.path().join("prpod.toml"),
        format!(
            "[source]\nusername = \"{}\"\nconnect_timeout_secs = 300\nstall_timeout_secs = 300\n[image]\nrepository = \"{repository}\"\ndockerfile = \"Dockerfile\"\n\
             [build]\nbackend = \"native\"\n[registry]\nplain_http = [\"{}\"]\n",
            w.git.user, w.registry_plain.host_pod
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_prpod"))
        .args(["--output", "json", "build", "--repo-url", &url, "--branch", "main", "--sha", &sha])
        .current_dir(work.path())
        .env_remove("PRPOD_CONFIG")
        .env("PRPOD_GIT_TOKEN", w.git.token.expose())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "prpod build of the job image: {}", explain(&out));
    let r = crate::json(&out);
    assert_eq!(r["backend"], "native", "{r}");
    (format!("{repository}@{}", r["image"]["digest"].as_str().unwrap()), size)
}

/// The job image, built once per test binary ([`build_job_image`]).
fn job_image() -> &'static (String, u64) {
    static IMAGE: OnceLock<(String, u64)> = OnceLock::new();
    IMAGE.get_or_init(build_job_image)
}

/// A spawned `prpod dispatch` whose stderr is read as it comes.
struct Spawned {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Spawned {
    fn new(mut command: Command) -> Spawned {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn prpod dispatch");
        let stderr: Arc<Mutex<String>> = Arc::default();
        let (pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Spawned { child, stderr, reader: Some(reader) }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr holds `what`, failing if dispatch exits first.
    fn wait_for_stderr(&mut self, what: &str, timeout: Duration) {
        wait_for(&format!("`{what}` in dispatch's output"), timeout, || {
            if self.stderr().contains(what) {
                return Some(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("dispatch exited ({st}) before `{what}`: {}", self.stderr());
            }
            None
        })
    }

    /// Waits for the exit; the exit code, stdout and stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let mut stdout = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
        let st = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let err = self.stderr();
        assert_no_secrets(stdout.as_bytes(), "dispatch's stdout");
        assert_no_secrets(err.as_bytes(), "dispatch's stderr");
        (st.code(), stdout, err)
    }
}

/// The run's log lines as dispatch streamed them (after `│ `).
fn streamed(stderr: &str) -> Vec<String> {
    stderr.lines().filter_map(|l| l.split_once("│ ").map(|(_, r)| r.trim_end().to_string())).collect()
}

/// The commit of each revision of the release `ns` in `ns`, oldest first (the
/// `prpod.dev/commit` annotation in its manifest).
fn revision_commits(ns: &str) -> Vec<String> {
    let w = world();
    let home = prpod_test_support::HelmHome::new();
    let helm = |args: &[&str]| {
        let out = home.command(&w.helm, &w.kubeconfig).args(args).args(["--namespace", ns]).output().unwrap();
        assert!(out.status.success(), "helm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let history: Value = serde_json::from_str(&helm(&["history", ns, "--output", "json"])).unwrap();
    history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let manifest = helm(&["get", "manifest", ns, "--revision", &r["revision"].to_string()]);
            // (`prpod.dev/commit: "SHA"`, or `"prpod.dev/commit": "SHA"` as Helm 4 stores it)
            let line = manifest.lines().find(|l| l.contains("prpod.dev/commit")).expect("no commit annotation");
            let value = line.rsplit_once(':').unwrap().1.trim().trim_matches(['"', ',']);
            value.to_string()
        })
        .collect()
}

/// The job image (built here by prpod's native builder) runs `prpod run` for the example PR in a
/// real Job: dispatch streams the run's log and exits 0, the preview answers HTTP with the
/// commit. Then two dispatches of one PR, one commit after the other: the newer supersedes the
/// older's running Job (deleted; its dispatch exits 6), and only the newer commit ends deployed
/// (no revision of the older after the newer's). The newer's dispatch talks to the API server
/// through a proxy that cuts every connection once the log streams: dispatch resumes the log,
/// and what it streamed is the pod's log, no line twice, none lost. A commit whose Dockerfile
/// has a RUN line fails the run in the Job (the native backend), and dispatch exits 2 with the
/// error in the streamed log. Nothing secret in any output.
#[test]
fn dispatch_runs_the_example_pr_in_a_job_from_the_native_built_image() {
    let w = world();
    let (image, staged) = job_image().clone();
    eprintln!("job image {image}: {:.1} MB staged", staged as f64 / 1e6);
    let name = unique_name("acme/hello-web");
    let url = w.git.publish(&crate::repo_root().join("examples/hello-web"), &name);
    // (the Job clones through the pod gateway; the caller resolves the same URL)
    let url_pod = url.replacen(&w.git.url, &w.git.url_pod, 1);
    let ls = w.git.git_with_token(&w.git.token).args(["ls-remote", &url, "refs/heads/main"]).output().unwrap();
    let sha = String::from_utf8_lossy(&ls.stdout).split_whitespace().next().unwrap().to_string();
    let p = Preview::new(false, &unique_name("prpod-test/dispatch-e2e"), "").of_repository(&name);
    let write_config = |p: &Preview| {
        std::fs::write(
            p.dir.path().join("prpod.toml"),
            format!(
                "[source]\nusername = \"{}\"\nplain_http = [\"{}\"]\n\n[image]\nrepository = \"{}\"\nbuild_args = {{ BASE = \"{}\" }}\n\n\
                 [build]\nbackend = \"native\"\n\n[deploy]\ntimeout = \"120s\"\nset = {{ terminationGracePeriodSeconds = 1 }}\n\n\
                 [dispatch]\nimage = \"{image}\"\nbuild_time = \"10m\"\n",
                w.git.user,
                w.git.url_pod.trim_start_matches("http://"),
                p.repository,
                w.web_image_tls.replacen(&w.registry_tls.host, &w.registry_tls.host_pod, 1)
            ),
        )
        .unwrap();
    };
    write_config(&p);
    let args = |p: &Preview, url: &str, branch: &str, sha: &str| {
        let mut args = vec!["--output".to_string(), "json".into(), "dispatch".into()];
        args.extend(["--repo-url".into(), url.into(), "--pr".into(), p.pr.to_string()]);
        args.extend(["--branch".into(), branch.into(), "--base".into(), "main".into(), "--sha".into(), sha.into()]);
        args
    };
    let dispatch = |p: &Preview, url: &str, sha: &str| {
        p.prpod(&args(p, url, "main", sha).iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = dispatch(&p, &url_pod, &sha);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let r = crate::json(&out);
    assert_eq!(r["exit_code"], 0, "{r}");
    let log = crate::stderr(&out);
    // the run's own lines, streamed from the pod
    assert!(log.contains("│") && log.contains("verify"), "the run's log was not streamed: {log}");
    let served = crate::run::pages(&p.ns);
    assert!(!served.is_empty() && served.iter().all(|s| s.contains(&sha)), "{served:?}");

    // Two commits of the PR, dispatched one after the other: the older's Job runs when the newer
    // is dispatched. The newer's dispatch goes through a proxy that cuts its connections.
    let two = std::time::Instant::now();
    let branch = crate::run::PrBranch::clone(&url, "feature/two");
    let older = branch.commit_and_push("older");
    let spawn = |sha: &str, kubeconfig: Option<&std::path::Path>| {
        let a = args(&p, &url_pod, "feature/two", sha);
        let mut c = p.command(&a.iter().map(String::as_str).collect::<Vec<_>>());
        if let Some(k) = kubeconfig {
            c.env("KUBECONFIG", k);
        }
        Spawned::new(c)
    };
    let mut first = spawn(&older, None);
    first.wait_for_stderr("│ ", Duration::from_secs(120));
    let older_job = jobs(&p.ns).into_iter().find(|(_, c)| *c == older).expect("the older commit's Job").0;
    let newer = branch.commit_and_push("newer");
    let text = std::fs::read_to_string(&w.kubeconfig).unwrap();
    let server = text.lines().find_map(|l| l.trim().strip_prefix("server: https://")).unwrap().to_string();
    let proxy = crate::fault_proxy::TcpFaultProxy::start(server.rsplit_once(':').unwrap().0, &server);
    let proxied = p.dir.path().join("kubeconfig-proxied");
    prpod_test_support::write_private(
        &proxied,
        text.replace(&format!("https://{server}"), &format!("https://{}", proxy.addr)).as_bytes(),
    );
    let mut second = spawn(&newer, Some(&proxied));
    // the older Job is deleted before the newer's starts; the newer's log streams, then every
    // connection to the API server is cut (new ones refused for a second)
    second.wait_for_stderr("│ ", Duration::from_secs(120));
    let newer_job = jobs(&p.ns).into_iter().find(|(_, c)| *c == newer).expect("the newer commit's Job").0;
    let phase = |job: &str| {
        w.kubectl_ok([
            "get",
            "pods",
            "-n",
            &p.ns,
            "-l",
            &format!("job-name={job}"),
            "-o",
            "jsonpath={.items[*].status.phase}",
        ])
    };
    let running = phase(&newer_job);
    proxy.cut(Duration::from_secs(1));
    assert_eq!(running.trim(), "Running", "the log stream was cut after the run ended");
    assert!(proxy.cut_count.load(std::sync::atomic::Ordering::SeqCst) > 0, "no connection was cut");
    let (code, stdout, log) = second.finish();
    assert_eq!(code, Some(0), "the newer commit's dispatch: {log}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["replaced"], serde_json::json!([older_job]), "{r}");
    let pod_log = w.kubectl_ok(["logs", "-n", &p.ns, &format!("job/{newer_job}"), "-c", "prpod"]);
    let pod_lines: Vec<String> = pod_log.lines().map(|l| l.trim_end().to_string()).collect();
    assert!(log.contains("resuming it after the last line"), "the cut did not end the log stream: {log}");
    assert_eq!(streamed(&log), pod_lines, "what dispatch streamed across the cut is not the pod's log");
    let (code, _, log) = first.finish();
    assert_eq!(code, Some(6), "the superseded dispatch: {log}");
    assert!(log.contains("superseded"), "{log}");
    assert!(jobs(&p.ns).iter().all(|(j, _)| *j != older_job), "the older Job is still there");
    // only the newer commit ends deployed, and the older never deployed after it
    let deployed = w.kubectl_ok([
        "get",
        "deployments",
        "-n",
        &p.ns,
        "-o",
        "jsonpath={.items[*].metadata.annotations.prpod\\.dev/commit}",
    ]);
    assert_eq!(deployed.trim(), newer);
    let served = crate::run::pages(&p.ns);
    assert!(!served.is_empty() && served.iter().all(|s| s.contains(&newer)), "{served:?}");
    let commits = revision_commits(&p.ns);
    assert_eq!(commits.last(), Some(&newer), "{commits:?}");
    let first_newer = commits.iter().position(|c| *c == newer).unwrap();
    assert!(!commits[first_newer..].contains(&older), "the older commit deployed after the newer: {commits:?}");
    eprintln!("two dispatches of one PR, the newer across a cut: {:.1} s", two.elapsed().as_secs_f64());

    // a RUN line: the native backend refuses it in the Job, dispatch exits with the run's 2
    let src = TempDir::new("hello-web-run");
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", crate::repo_root().join("examples/hello-web").display()))
        .arg(src.path())
        .status()
        .unwrap();
    assert!(st.success());
    let dockerfile = std::fs::read_to_string(src.path().join("Dockerfile")).unwrap();
    std::fs::write(src.path().join("Dockerfile"), format!("{dockerfile}RUN echo hi\n")).unwrap();
    let bad = unique_name("acme/hello-web");
    let bad_url = w.git.publish(src.path(), &bad);
    let ls = w.git.git_with_token(&w.git.token).args(["ls-remote", &bad_url, "refs/heads/main"]).output().unwrap();
    let bad_sha = String::from_utf8_lossy(&ls.stdout).split_whitespace().next().unwrap().to_string();
    let q = Preview::new(false, &unique_name("prpod-test/dispatch-e2e"), "").of_repository(&bad);
    write_config(&q);
    let out = dispatch(&q, &bad_url.replacen(&w.git.url, &w.git.url_pod, 1), &bad_sha);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert_eq!(crate::json(&out)["exit_code"], 2);
    assert!(crate::stderr(&out).contains("RUN"), "the run's error is not in the streamed log: {}", explain(&out));
}
