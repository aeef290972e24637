//! The deploy lock and signals, with `prpod deploy` as processes on the service world: runs of
//! one PR never run Helm at the same time (the release's stored history shows it); a failed or
//! interrupted run releases its Lease at once; a run killed with SIGKILL is taken over after the
//! Lease's expiry; a lost Lease interrupts Helm; SIGTERM stops Helm (from prpod), waits for its
//! rollback (killing it only after `[deploy] timeout`), removes the temporary files and exits
//! 143 naming the release's state; a failed verify rolls back past a `failed` revision to the
//! last `deployed` one.

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prpod::clients::helm::KubeTarget;
use prpod::clients::kube::Kube;
use prpod_test_support::{TempDir, wait_for, world};

use crate::run::{Preview, explain, fake_sha};
use crate::{json, write_chart};

/// The world's web image as pods name it, pinned: `REPOSITORY@sha256:...`.
fn web_image() -> String {
    let i = crate::deploy::web_image(world());
    format!("{}@{}", i.repository, i.digest.unwrap())
}

/// A preview whose chart (the operator's `[deploy] chart`) is one Deployment of the web image
/// that becomes ready `delay` seconds after its pod starts; each commit rolls it out anew.
fn slow_preview(delay: u32, extra: &str) -> Preview {
    preview_with(false, &web_chart(delay, true, 0), extra)
}

/// Makes the slow preview's next revision become ready only after 60 s, so a test can act while
/// Helm waits for it.
fn slow_down_next_revision(p: &Preview) {
    let template = p.dir.path().join("slow/templates/app.yaml");
    let text = std::fs::read_to_string(&template).unwrap();
    std::fs::write(&template, text.replace("initialDelaySeconds: 1,", "initialDelaySeconds: 60,")).unwrap();
}

/// A preview (Helm 3 or 4) whose chart is `template` (see [`web_chart`]).
fn preview_with(helm3: bool, template: &str, extra: &str) -> Preview {
    let p = Preview::new(helm3, "prpod-test/web", &format!("chart = \"slow\"\n{extra}"));
    write_chart(&p.dir.path().join("slow"), "slow", template);
    p
}

/// One Deployment of the web image, ready `delay` seconds after its pod starts (or never, when
/// not `ready`), rolled out with `max_unavailable`.
fn web_chart(delay: u32, ready: bool, max_unavailable: u32) -> String {
    let probe = if ready { "true" } else { "false" };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  strategy: {{rollingUpdate: {{maxUnavailable: {max_unavailable}, maxSurge: 1}}}}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{commit: {{{{ .Values.prpod.pr.commit | quote }}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      securityContext: {{runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001}}
      containers:
        - name: web
          image: {{{{ .Values.prpod.image | quote }}}}
          securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
          resources: {{requests: {{cpu: 10m, memory: 16Mi}}, limits: {{cpu: 100m, memory: 64Mi}}}}
          readinessProbe: {{exec: {{command: ["/bin/sh", "-c", "{probe}"]}}, initialDelaySeconds: {delay}, periodSeconds: 1}}
"#
    )
}

/// `prpod --output json deploy` of the web image for commit `sha`, as a command to spawn.
fn deploy_cmd(p: &Preview, sha: &str) -> Command {
    let mut args: Vec<String> = vec!["--output".into(), "json".into(), "deploy".into()];
    args.extend(p.context(sha));
    args.extend(["--image".into(), web_image()]);
    let mut c = p.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn leases(ns: &str) -> String {
    world().kubectl_ok(["get", "leases", "-n", ns, "-o", "name"]).trim().to_string()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The release's revisions and statuses as Helm stores them (its Secrets), read through the API.
fn revisions(kube: &Kube, rt: &tokio::runtime::Runtime, ns: &str) -> Vec<(u32, String)> {
    rt.block_on(kube.helm_release_revisions(ns, ns)).unwrap_or_default()
}

/// Per revision: when it was first seen, and when first seen out of `pending-*`.
type Seen = BTreeMap<u32, (Instant, Option<Instant>)>;

/// Watches the release's stored history every 100 ms until stopped; returns, per revision, when
/// it was first seen and when it was first seen out of `pending-*`.
struct HistoryWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: std::thread::JoinHandle<()>,
}

impl HistoryWatch {
    fn start(ns: &str) -> HistoryWatch {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(BTreeMap::new())));
        let (stop2, seen2, ns) = (stop.clone(), seen.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            let rt = rt();
            let target = KubeTarget { kubeconfig: Some(world().kubeconfig.clone()), context: None };
            let kube = rt.block_on(Kube::connect(&target)).unwrap();
            while !stop2.load(Ordering::SeqCst) {
                let now = Instant::now();
                for (rev, status) in revisions(&kube, &rt, &ns) {
                    let mut seen = seen2.lock().unwrap();
                    let e = seen.entry(rev).or_insert((now, None));
                    if !status.starts_with("pending-") && e.1.is_none() {
                        e.1 = Some(now);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        HistoryWatch { stop, seen, thread }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// Three runs of one PR started together: each waits for the lock, none fails, and in the
/// release's history each revision appears only after the one before it left `pending-*`.
#[test]
fn concurrent_runs_of_one_pr_never_run_helm_at_the_same_time() {
    let p = slow_preview(3, "");
    // The namespace exists before the runs race (the first deploy makes it; a race for the
    // namespace itself is not what this test is about).
    let out = deploy_cmd(&p, &fake_sha("lock-0")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let history = HistoryWatch::start(&p.ns);
    let runs: Vec<Child> = (1..=3).map(|i| deploy_cmd(&p, &fake_sha(&format!("lock-{i}"))).spawn().unwrap()).collect();
    let outs: Vec<Output> = runs.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let seen = history.finish();
    for out in &outs {
        assert_eq!(out.status.code(), Some(0), "{}", explain(out));
    }
    let mut revs: Vec<u32> = outs.iter().map(|o| json(o)["revision"].as_u64().unwrap() as u32).collect();
    revs.sort();
    assert_eq!(revs, [2, 3, 4], "each run made its own revision");
    let rt = rt();
    let target = KubeTarget { kubeconfig: Some(world().kubeconfig.clone()), context: None };
    let kube = rt.block_on(Kube::connect(&target)).unwrap();
    let statuses: Vec<(u32, String)> = revisions(&kube, &rt, &p.ns);
    assert!(statuses.iter().all(|(_, s)| s == "deployed" || s == "superseded"), "{statuses:?}");
    for r in 3..=4 {
        let (prev_start, prev_end) = seen[&(r - 1)];
        let (start, _) = seen[&r];
        let prev_end = prev_end.unwrap_or_else(|| panic!("revision {} never left pending", r - 1));
        assert!(
            start >= prev_end,
            "revision {r} appeared {:?} before revision {} was done (it appeared at +{:?})",
            prev_end - start,
            r - 1,
            prev_start.elapsed()
        );
    }
    assert_eq!(leases(&p.ns), "", "the last run released the lock");
}

/// A run that fails after taking the lock (its image cannot be pulled: exit 5) releases it on
/// the way out: the Lease is gone when it exits, and the next run starts at once (no takeover
/// after the 30 s expiry).
#[test]
fn a_failed_runs_successor_starts_at_once() {
    let p = slow_preview(1, "");
    let missing = format!(
        "{}@sha256:{}",
        web_image().split_once('@').unwrap().0.replace("prpod-test/web", "prpod-test/missing"),
        "0".repeat(64)
    );
    let mut args: Vec<String> = vec!["--output".into(), "json".into(), "deploy".into()];
    args.extend(p.context(&fake_sha("fail-1")));
    args.extend(["--image".into(), missing]);
    let out = p.prpod(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(5), "{}", explain(&out));
    assert_eq!(leases(&p.ns), "", "the failed run released its lock");
    let started = Instant::now();
    let out = deploy_cmd(&p, &fake_sha("fail-2")).output().unwrap();
    let took = started.elapsed();
    println!("the successor of a failed run deployed in {took:?}");
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let human = crate::stderr(&out);
    assert!(!human.contains("died"), "nothing was taken over: {human}");
    assert!(took < Duration::from_secs(25), "the successor took {took:?}: it waited for the lock");
}

/// A run killed with SIGKILL (with its Helm, as a CI runner kills the job's process group)
/// mid-upgrade releases nothing: the next run waits for the Lease to expire, takes it over,
/// recovers the release the killed Helm left pending, and deploys.
#[test]
fn a_run_killed_with_sigkill_is_taken_over_after_the_expiry() {
    use std::os::unix::process::CommandExt;
    let p = slow_preview(20, "");
    let mut cmd = deploy_cmd(&p, &fake_sha("kill-1"));
    cmd.process_group(0);
    let child = cmd.spawn().unwrap();
    let rt = rt();
    let target = KubeTarget { kubeconfig: Some(world().kubeconfig.clone()), context: None };
    let kube = rt.block_on(Kube::connect(&target)).unwrap();
    wait_for("Helm to start the install", Duration::from_secs(60), || {
        revisions(&kube, &rt, &p.ns).iter().any(|(_, s)| s.starts_with("pending-")).then_some(())
    });
    let pgid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "killed");
    let killed_at = Instant::now();
    assert!(leases(&p.ns).contains("prpod-deploy-"), "a killed run leaves its lease");

    let out = deploy_cmd(&p, &fake_sha("kill-2")).output().unwrap();
    let waited = killed_at.elapsed();
    println!("the successor of a killed run finished {waited:?} after the kill");
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let human = crate::stderr(&out);
    assert!(human.contains("died") && human.contains("pending-install"), "{human}");
    // The lease expires 30 s after its last renewal, which came at most 10 s before the kill.
    assert!(waited >= Duration::from_secs(19), "taken over after {waited:?}, before the lease expired");
    assert_eq!(leases(&p.ns), "");
}

/// While Helm runs, another holder takes the Lease (as a run would that found it expired): the
/// next renewal notices, prpod interrupts Helm, which rolls back, and exits 4 saying so.
#[test]
fn a_lost_lock_interrupts_helm() {
    let p = slow_preview(1, "");
    let out = deploy_cmd(&p, &fake_sha("lost-1")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    // Revision 2 becomes ready only after 60 s: the lock is taken while Helm waits.
    slow_down_next_revision(&p);
    let started = Instant::now();
    let child = deploy_cmd(&p, &fake_sha("lost-2")).spawn().unwrap();
    let rt = rt();
    let target = KubeTarget { kubeconfig: Some(world().kubeconfig.clone()), context: None };
    let kube = rt.block_on(Kube::connect(&target)).unwrap();
    wait_for("Helm to start the upgrade", Duration::from_secs(60), || {
        revisions(&kube, &rt, &p.ns).iter().any(|(_, s)| s == "pending-upgrade").then_some(())
    });
    let lease = format!("prpod-deploy-{}", p.ns);
    world().kubectl_ok([
        "patch",
        "lease",
        &lease,
        "-n",
        &p.ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"holderIdentity":"prpod/other-runner/1/0123456789ab"}}"#,
    ]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", explain(&out));
    assert!(started.elapsed() < Duration::from_secs(60), "stopped before the rollout could end");
    let err = json(&out)["error"]["error"].as_str().unwrap().to_string();
    println!("{err}");
    assert!(err.contains("lost the deploy lock") && err.contains("prpod/other-runner/1/0123456789ab"), "{err}");
    assert!(err.contains("rolled the release back") && err.contains("(deployed)"), "{err}");
    let holder = world().kubectl_ok(["get", "lease", &lease, "-n", &p.ns, "-o", "jsonpath={.spec.holderIdentity}"]);
    assert_eq!(holder, "prpod/other-runner/1/0123456789ab", "another run's lease is left alone");
}

/// SIGTERM while Helm upgrades: prpod sends Helm SIGTERM itself, waits for Helm's rollback,
/// releases the Lease and removes its temporary files before it exits 143, naming the state the
/// release was left in.
#[test]
fn sigterm_during_a_deploy_stops_helm_releases_the_lock_and_exits_143() {
    let p = slow_preview(1, "");
    let out = deploy_cmd(&p, &fake_sha("term-1")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    slow_down_next_revision(&p);
    let tmp = TempDir::new("prpod-tmp");
    let mut cmd = deploy_cmd(&p, &fake_sha("term-2"));
    cmd.env("TMPDIR", tmp.path());
    let child = cmd.spawn().unwrap();
    let rt = rt();
    let target = KubeTarget { kubeconfig: Some(world().kubeconfig.clone()), context: None };
    let kube = rt.block_on(Kube::connect(&target)).unwrap();
    wait_for("Helm to start the upgrade", Duration::from_secs(60), || {
        revisions(&kube, &rt, &p.ns).iter().any(|(_, s)| s == "pending-upgrade").then_some(())
    });
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_some(), "prpod keeps its temporary files in TMPDIR");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let sent = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    println!("prpod exited {:?} after SIGTERM", sent.elapsed());
    assert_eq!(out.status.code(), Some(143), "{}", explain(&out));
    assert!(sent.elapsed() < Duration::from_secs(50), "Helm's rollback took {:?}", sent.elapsed());
    assert_eq!(leases(&p.ns), "", "the lock is released before prpod exits");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    let err = json(&out)["error"]["error"].as_str().unwrap().to_string();
    println!("{err}");
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    assert!(err.contains(&format!("release {} in namespace {}", p.ns, p.ns)) && err.contains("(deployed)"), "{err}");
    let human = crate::stderr(&out);
    assert!(human.contains("interrupted by SIGTERM"), "the human line on stderr: {human}");
    let statuses = revisions(&kube, &rt, &p.ns);
    assert_eq!(statuses.last().map(|(_, s)| s.as_str()), Some("deployed"), "{statuses:?}");
}

/// The children of process `pid` (every thread's), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(text.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
    }
    out
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// prpod alone killed with SIGKILL (an OOM kill; no destructor runs) while Helm upgrades: Helm
/// is not left orphaned to finish the upgrade behind an expiring Lease. The kernel sends it
/// SIGTERM (prpod asks for that when it starts Helm), and it stops well before the revision,
/// slowed to become ready after 60 s, could have finished.
#[test]
fn helm_stops_when_prpod_is_killed_alone() {
    let p = slow_preview(1, "");
    let out = deploy_cmd(&p, &fake_sha("orphan-1")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    slow_down_next_revision(&p);
    let mut child = deploy_cmd(&p, &fake_sha("orphan-2")).spawn().unwrap();
    let rt = rt();
    let target = KubeTarget { kubeconfig: Some(world().kubeconfig.clone()), context: None };
    let kube = rt.block_on(Kube::connect(&target)).unwrap();
    wait_for("Helm to start the upgrade", Duration::from_secs(120), || {
        if let Ok(Some(_)) = child.try_wait() {
            panic!("prpod ended before Helm's upgrade was seen: {:?}", revisions(&kube, &rt, &p.ns));
        }
        revisions(&kube, &rt, &p.ns).iter().any(|(_, s)| s == "pending-upgrade").then_some(())
    });
    let helm: Vec<u32> = children(child.id())
        .into_iter()
        .filter(|c| std::fs::read_to_string(format!("/proc/{c}/cmdline")).is_ok_and(|l| l.contains("upgrade")))
        .collect();
    assert_eq!(helm.len(), 1, "one Helm upgrade runs under prpod");
    let helm = helm[0];
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let killed = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), None, "killed");
    wait_for("the orphaned Helm to stop", Duration::from_secs(30), || (!alive(helm)).then_some(()));
    println!("Helm stopped {:?} after prpod was killed", killed.elapsed());
    // Helm stopped: the slowed revision 2 never became `deployed`. Helm either rolled it back
    // (`failed`, then a `deployed` revision 3 of revision 1's contents) or died before it
    // could (its stderr is a pipe nobody reads any more, and Go dies on a write to it): then it
    // stays `pending-upgrade`, which the next run recovers once the killed run's Lease expired
    // (a_run_killed_with_sigkill_is_taken_over_after_the_expiry).
    let statuses = revisions(&kube, &rt, &p.ns);
    let second = statuses.iter().find(|(r, _)| *r == 2).map(|(_, s)| s.as_str());
    assert!(matches!(second, Some("pending-upgrade" | "failed")), "{statuses:?}");
    assert!(leases(&p.ns).contains("prpod-deploy-"), "the killed run's Lease is left to expire");
}

/// A release whose latest revision is `failed` (an upgrade that timed out, outside prpod), then
/// a deploy whose verify fails (Helm 3 calls a Deployment with `maxUnavailable: 1` ready at once;
/// its pod never is): prpod rolls back to the last `deployed` revision, past the failed one,
/// and does not uninstall the preview.
#[test]
fn a_failed_verify_rolls_back_past_a_failed_revision() {
    let w = world();
    let p = preview_with(true, &web_chart(1, true, 0), "");
    // A short timeout: verify waits for the rest of it for a pod that never gets ready.
    let deploy = |sha: &str| deploy_cmd(&p, sha).env("PRPOD_DEPLOY_TIMEOUT", "15s").output().unwrap();
    let out = deploy(&fake_sha("rb-1"));
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));

    // Revision 2: an upgrade that never becomes ready, by Helm 3 without --atomic: `failed`.
    let chart = p.dir.path().join("slow");
    write_chart(&chart, "slow", &web_chart(1, false, 0));
    let image = crate::deploy::web_image(w);
    let home = prpod_test_support::HelmHome::new();
    let helm = w
        .helm3_cmd(&home)
        .args(["upgrade", &p.ns])
        .arg(&chart)
        .args(["--namespace", &p.ns, "--wait", "--timeout", "3s"])
        .args(["--set", &format!("prpod.image={}@{},prpod.pr.commit=failed", image.repository, image.digest.unwrap())])
        .output()
        .unwrap();
    assert!(!helm.status.success(), "the upgrade was to fail: {}", String::from_utf8_lossy(&helm.stdout));
    let rt = rt();
    let target = KubeTarget { kubeconfig: Some(w.kubeconfig.clone()), context: None };
    let kube = rt.block_on(Kube::connect(&target)).unwrap();
    let before = revisions(&kube, &rt, &p.ns);
    assert_eq!(before.last(), Some(&(2, "failed".to_string())), "{before:?}");

    // Revision 3: Helm 3 returns at once, the pod never gets ready, verify fails.
    write_chart(&chart, "slow", &web_chart(1, false, 1));
    let out = deploy(&fake_sha("rb-3"));
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let human = crate::stderr(&out);
    assert!(human.contains("rolled back to revision 1 (now serving as revision 4)"), "{human}");
    let after = revisions(&kube, &rt, &p.ns);
    assert_eq!(after.last(), Some(&(4, "deployed".to_string())), "rolled back, not uninstalled: {after:?}");
    assert_eq!(leases(&p.ns), "");
}

/// SIGTERM while a Helm that ignores SIGTERM upgrades: prpod gives Helm's rollback the whole
/// `[deploy] timeout` before it kills Helm, then exits 143 saying the release was left
/// `pending-upgrade`, and leaves the Lease to expire (so the next run recovers the release).
#[test]
fn a_helm_that_ignores_sigterm_is_killed_only_after_the_rollback_grace() {
    use std::os::unix::fs::PermissionsExt;
    let w = world();
    let p = slow_preview(1, "");
    let out = deploy_cmd(&p, &fake_sha("grace-1")).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    std::fs::write(p.dir.path().join("slow/templates/app.yaml"), web_chart(60, true, 0)).unwrap();
    // Helm behind a shell that ignores SIGTERM; its `upgrade` runs as the shell's child (with its
    // own output, so a kill of the shell closes prpod's pipes), its pid noted for the cleanup.
    let pids = p.dir.path().join("helm-pids");
    let helm_log = p.dir.path().join("helm-upgrade.log");
    let wrapper = p.dir.path().join("stubborn-helm");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntrap '' TERM\ncase \"$1\" in\n  upgrade) '{helm}' \"$@\" >'{log}' 2>&1 &\n    echo $! >> '{pids}'\n    \
             wait $!\n    exit 1 ;;\n  *) exec '{helm}' \"$@\" ;;\nesac\n",
            helm = w.helm.display(),
            pids = pids.display(),
            log = helm_log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = deploy_cmd(&p, &fake_sha("grace-2"));
    cmd.env("PRPOD_HELM", &wrapper).env("PRPOD_DEPLOY_TIMEOUT", "10s");
    let child = cmd.spawn().unwrap();
    let rt = rt();
    let target = KubeTarget { kubeconfig: Some(w.kubeconfig.clone()), context: None };
    let kube = rt.block_on(Kube::connect(&target)).unwrap();
    wait_for("Helm to start the upgrade", Duration::from_secs(60), || {
        revisions(&kube, &rt, &p.ns).iter().any(|(_, s)| s == "pending-upgrade").then_some(())
    });
    let sent = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = sent.elapsed();
    // The Helm the shell started is still running: stop it (it is this test's).
    for pid in std::fs::read_to_string(&pids).unwrap_or_default().lines() {
        if let Some(pid) = pid.trim().parse().ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    println!("prpod exited {took:?} after SIGTERM");
    assert_eq!(out.status.code(), Some(143), "{}", explain(&out));
    assert!(
        took >= Duration::from_secs(10),
        "Helm was killed after {took:?}, before its rollback's time; prpod: {}\nHelm's own output: {}",
        explain(&out),
        std::fs::read_to_string(&helm_log).unwrap_or_default()
    );
    let err = json(&out)["error"]["error"].as_str().unwrap().to_string();
    println!("{err}");
    assert!(err.contains("did not finish its rollback within 10s and was killed"), "{err}");
    assert!(err.contains("(pending-upgrade)") && err.contains("the next run recovers it"), "{err}");
    assert!(leases(&p.ns).contains("prpod-deploy-"), "the Lease is left to expire for the recovery");
}
