//! Test fixtures on the world's services: the test web image on every registry, and git
//! repositories published on the git server. `scripts/dev-env up` starts services only; what
//! tests put into them lives here, in Rust.

use crate::process::{describe, run, run_ok, run_with_stdin};
use crate::{GitServer, Registry, TempDir, World};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Makes sure the test web image is on registries A, B and C, under
/// [`World::web_image_plain`], [`World::web_image_tls`] and [`World::web_image_token`].
///
/// Built once per world: a marker in the world's runtime directory (which `down` deletes with
/// the registries' data) says it is done; a lock serialises test processes that start together.
pub(crate) fn ensure_web_images(w: &World) -> Result<(), String> {
    let dir = w.run_dir.join("fixtures");
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let marker = dir.join("web-image.done");
    if marker.exists() {
        return Ok(());
    }
    let lock =
        File::create(dir.join("web-image.lock")).map_err(|e| format!("create lock in {}: {e}", dir.display()))?;
    lock.lock().map_err(|e| format!("lock {}: {e}", dir.display()))?;
    if marker.exists() {
        return Ok(()); // another process built it while this one waited
    }
    build_and_push_web_image(w)?;
    fs::write(&marker, format!("{}\n{}\n{}\n", w.web_image_plain, w.web_image_tls, w.web_image_token))
        .map_err(|e| format!("write {}: {e}", marker.display()))
}

/// The web app: busybox-static `httpd` in a `FROM scratch` image. `GET /` answers
/// [`World::web_body`]; `GET /cgi-bin/greeting` answers the container's `GREETING` variable, so a
/// test can tell its own pod from another; busybox's applets (`sh`, `wget` with `ssl_client`)
/// make it a probe pod too.
fn build_and_push_web_image(w: &World) -> Result<(), String> {
    let tmp = TempDir::new("web-image");
    let ctx = tmp.path().join("context");
    let write = |p: PathBuf, content: &str| fs::write(&p, content).map_err(|e| format!("write {}: {e}", p.display()));
    fs::create_dir_all(ctx.join("www/cgi-bin")).map_err(|e| format!("create {}: {e}", ctx.display()))?;
    fs::copy("/bin/busybox", ctx.join("busybox")).map_err(|e| format!("copy /bin/busybox (busybox-static): {e}"))?;
    write(ctx.join("www/index.html"), &format!("{}\n", w.web_body))?;
    let cgi = ctx.join("www/cgi-bin/greeting");
    write(cgi.clone(), "#!/bin/sh\nprintf \"Content-Type: text/plain\\r\\n\\r\\n%s\\n\" \"${GREETING:-}\"\n")?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&cgi, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", cgi.display()))?;
    let port = w.web_port;
    write(
        ctx.join("Containerfile"),
        &format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             COPY www /www\nEXPOSE {port}\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"{port}\", \"-h\", \"/www\"]\n"
        ),
    )?;
    let cni = tmp.path().join("cni");
    fs::create_dir_all(&cni).map_err(|e| format!("create {}: {e}", cni.display()))?;
    // chroot isolation and an empty CNI dir: RUN creates no network, bridge or iptables chain
    let mut bud = w.buildah();
    bud.args(["bud", "--isolation", "chroot", "-q", "--cni-config-dir"])
        .arg(&cni)
        .args(["-t", &w.web_image_plain])
        .arg(&ctx);
    checked(&mut bud)?;
    let mut push_a = w.buildah();
    push_a.args(["push", "-q", "--tls-verify=false", &w.web_image_plain]);
    checked(&mut push_a)?;
    for (reg, image) in [(&w.registry_tls, &w.web_image_tls), (&w.registry_token, &w.web_image_token)] {
        let mut push = w.buildah();
        push.args(["push", "-q"]).args(registry_flags(reg)).arg(&w.web_image_plain).arg(format!("docker://{image}"));
        checked(&mut push)?;
    }
    Ok(())
}

/// `--cert-dir` and `--authfile` for a TLS registry with credentials (buildah and skopeo).
fn registry_flags(r: &Registry) -> Vec<PathBuf> {
    let mut f = Vec::new();
    if let Some(d) = &r.cert_dir {
        f.extend([PathBuf::from("--cert-dir"), d.clone()]);
    }
    if let Some(a) = &r.authfile {
        f.extend([PathBuf::from("--authfile"), a.clone()]);
    }
    f
}

fn checked(cmd: &mut Command) -> Result<String, String> {
    let out = run(cmd);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{} failed: {}", describe(cmd), String::from_utf8_lossy(&out.stderr)))
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
