//! Test fixtures on the world's services: the web image on every registry (made by
//! `scripts/dev-env`, the one implementation), and git repositories published on the git server.

use crate::process::{describe, run, run_ok, run_with_stdin};
use crate::{GitServer, TempDir, World};
use std::fs::{self, File};
use std::path::Path;
use std::process::Command;

/// Makes sure the web image is on registries A, B and C, under [`World::web_image_plain`],
/// [`World::web_image_tls`] and [`World::web_image_token`].
///
/// `scripts/dev-env up` builds it once per world (the quick start needs it before any test ran);
/// `scripts/dev-env web-images` is the same step, a no-op once done, for a world an older script
/// started. One implementation, in the script: the harness does not build its own.
pub(crate) fn ensure_web_images(w: &World) -> Result<(), String> {
    let mut cmd = Command::new(w.repo_root().join("scripts/dev-env"));
    cmd.arg("web-images");
    let out = run(&mut cmd);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {}", describe(&cmd), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// See [`GitServer::publish`].
pub(crate) fn publish_git(git: &GitServer, dir: &Path, name: &str) -> String {
    assert!(
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
            && !name.contains("..")
            && !name.starts_with('/'),
        "bad repository name {name:?}: use [A-Za-z0-9._/-], no `..`"
    );
    assert!(dir.is_dir(), "publish: {} is not a directory", dir.display());
    let repo = git.repos.join(format!("{name}.git"));
    let parent = repo.parent().expect("repo has a parent");
    fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    // one publisher per repository at a time (tests publish concurrently)
    let lock = File::create(repo.with_extension("git.lock")).expect("create the repository's lock file");
    lock.lock().expect("lock the repository");
    if !repo.exists() {
        run_ok(Command::new("git").args(["init", "-q", "--bare", "-b", "main"]).arg(&repo));
    }
    // DIR's files committed straight into the bare repo with a throw-away index: no copy, no
    // clone, DIR's own .gitignore honoured. Identical content makes no new commit.
    let tmp = TempDir::new("git-index");
    let git_in_dir = || {
        let mut c = Command::new("git");
        c.current_dir(dir)
            .env("GIT_INDEX_FILE", tmp.path().join("index"))
            .env("GIT_DIR", &repo)
            .env("GIT_WORK_TREE", dir)
            .env("GIT_AUTHOR_NAME", "prpod test-support")
            .env("GIT_AUTHOR_EMAIL", "test-support@prpod.invalid")
            .env("GIT_COMMITTER_NAME", "prpod test-support")
            .env("GIT_COMMITTER_EMAIL", "test-support@prpod.invalid");
        c
    };
    run_ok(git_in_dir().args(["add", "-A", "."]));
    let tree = run_ok(git_in_dir().arg("write-tree")).trim().to_string();
    let head = run(git_in_dir().args(["rev-parse", "-q", "--verify", "refs/heads/main"]));
    let parent = head.status.success().then(|| String::from_utf8_lossy(&head.stdout).trim().to_string());
    let unchanged = parent
        .as_ref()
        .is_some_and(|p| run_ok(git_in_dir().args(["rev-parse", &format!("{p}^{{tree}}")])).trim() == tree);
    if !unchanged {
        let mut commit = git_in_dir();
        commit.args(["commit-tree", &tree]);
        if let Some(p) = &parent {
            commit.args(["-p", p]);
        }
        let msg = format!("publish {} as {name}\n", dir.file_name().map_or("dir".into(), |n| n.to_string_lossy()));
        let out = run_with_stdin(&mut commit, msg.as_bytes());
        let commit_id = crate::process::check_ok(&commit, out).trim().to_string();
        run_ok(git_in_dir().args(["update-ref", "refs/heads/main", &commit_id]));
    }
    git.repo_url(name)
}
