//! The GitHub workflows, checked statically (GitHub cannot be reached from here): triggers,
//! least permissions, concurrency and steps; and `actionlint` over every one when it is installed.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn load(rel: &str) -> Value {
    let text = std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// The `uses:` and `run:` of each of a job's steps.
fn steps(job: &Value) -> Vec<(Option<String>, Option<String>)> {
    job["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| (s["uses"].as_str().map(String::from), s["run"].as_str().map(String::from)))
        .collect()
}

fn permissions(wf: &Value) -> Vec<(String, String)> {
    let mut p: Vec<_> = wf["permissions"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string()))
        .collect();
    p.sort();
    p
}

#[test]
fn job_image_workflow_builds_on_change_weekly_and_by_hand_with_least_rights() {
    let wf = load(".github/workflows/pr-job-image.yaml");
    let on = &wf["on"];
    let paths = strs(&on["push"]["paths"]);
    assert!(paths.iter().any(|p| p.starts_with("images/pr-job")), "{paths:?}");
    assert!(paths.iter().any(|p| p.starts_with("host/")), "{paths:?}");
    assert!(on["schedule"][0]["cron"].as_str().is_some(), "weekly schedule");
    assert!(on.get("workflow_dispatch").is_some(), "workflow_dispatch");
    assert!(on.get("pull_request_target").is_none());
    let want: Vec<(String, String)> =
        [("attestations", "write"), ("contents", "read"), ("id-token", "write"), ("packages", "write")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    assert_eq!(permissions(&wf), want);
    let job = &wf["jobs"]["image"];
    let s = steps(job);
    let push = job["steps"].as_sequence().unwrap().iter().find(|s| s["with"]["push"] == Value::Bool(true)).unwrap();
    let tags = push["with"]["tags"].as_str().unwrap();
    assert!(tags.contains(":${{ github.sha }}") && tags.contains(":latest"), "{tags}");
    assert_eq!(push["with"]["file"].as_str(), Some("images/pr-job/Dockerfile"));
    assert!(s.iter().any(|(u, _)| u.as_deref().is_some_and(|u| u.starts_with("actions/attest-build-provenance@"))));
}

fn check_preview(rel: &str, deploy_job: &str, command: &str) {
    let wf = load(rel);
    let on = &wf["on"];
    assert!(on.get("pull_request").is_none(), "{rel}: pull_request_target only");
    let types = strs(&on["pull_request_target"]["types"]);
    for t in ["opened", "synchronize", "reopened", "closed"] {
        assert!(types.iter().any(|x| x == t), "{rel}: {t} in {types:?}");
    }
    // nothing beyond reading the repository and pushing the preview image
    for (k, v) in permissions(&wf) {
        assert!((k == "contents" && v == "read") || (k == "packages" && v == "write"), "{rel}: permission {k}: {v}");
    }
    let deploy = &wf["jobs"][deploy_job];
    let teardown = &wf["jobs"]["teardown"];
    let group = deploy["concurrency"]["group"].as_str().unwrap();
    assert_eq!(group, "preview-${{ github.event.pull_request.number }}", "{rel}");
    assert_ne!(deploy["concurrency"]["cancel-in-progress"], Value::Bool(true), "{rel}: never cancel mid-deploy");
    let tgroup = teardown["concurrency"]["group"].as_str().unwrap();
    assert_ne!(tgroup, group, "{rel}: closed has a concurrency group of its own");
    assert!(tgroup.contains("github.event.pull_request.number"), "{rel}: {tgroup}");
    assert_ne!(teardown["concurrency"]["cancel-in-progress"], Value::Bool(true), "{rel}");
    // deploy skips closed PRs and forks; teardown runs only on closed
    let dif = deploy["if"].as_str().unwrap();
    assert!(dif.contains("!= 'closed'") && dif.contains("head.repo.full_name == github.repository"), "{rel}: {dif}");
    let tif = teardown["if"].as_str().unwrap();
    assert!(tif.contains("== 'closed'"), "{rel}: {tif}");
    for job in [deploy, teardown] {
        for step in job["steps"].as_sequence().unwrap() {
            // under pull_request_target, the checkout is the base's: no `ref:` to the PR's head
            if step["uses"].as_str().is_some_and(|u| u.starts_with("actions/checkout@")) {
                assert!(step["with"].get("ref").is_none(), "{rel}: checkout must not take a ref");
                assert_eq!(step["with"]["persist-credentials"], Value::Bool(false), "{rel}");
            }
            // secrets only in env, never in a command line
            if let Some(run) = step["run"].as_str() {
                assert!(!run.contains("secrets."), "{rel}: secret in a run line: {run}");
            }
        }
    }
    let runs = |job: &Value| steps(job).into_iter().filter_map(|(_, r)| r).collect::<Vec<_>>().join("\n");
    assert!(runs(deploy).contains(&format!("prpod --config .github/prpod.toml {command}")), "{rel}");
    assert!(runs(teardown).contains("prpod --config .github/prpod.toml teardown"), "{rel}");
}

#[test]
fn preview_example_runs_prpod_per_pr_and_tears_down_closed_ones_in_their_own_group() {
    check_preview("examples/github/preview.yaml", "preview", "run");
}

#[test]
fn dispatch_example_runs_prpod_dispatch_with_the_same_safety() {
    check_preview("examples/github/preview-dispatch.yaml", "dispatch", "dispatch");
}

/// `actionlint` (through `scripts/actionlint`) over every workflow file, when it is installed
/// (`.ci/run` installs it; this test asks no registry); without it, the checks above still run.
#[test]
fn actionlint_accepts_every_workflow() {
    let script = root().join("scripts/actionlint");
    let installed = std::process::Command::new(&script).arg("--installed").status().unwrap();
    if !installed.success() {
        eprintln!("actionlint is not installed (scripts/actionlint --install): skipped");
        return;
    }
    let mut all: Vec<String> = ["examples/github/preview.yaml", "examples/github/preview-dispatch.yaml"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for e in std::fs::read_dir(root().join(".github/workflows")).unwrap().flatten() {
        all.push(format!(".github/workflows/{}", e.file_name().to_string_lossy()));
    }
    let out = std::process::Command::new(&script).args(&all).current_dir(root()).output().unwrap();
    assert!(
        out.status.success(),
        "actionlint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
