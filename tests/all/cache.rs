//! The compile cache trusts no one: each attack on it, with the attacker's file made here, is
//! refused (or the plugin recompiled) with a warning, and the call gives the right plugin's
//! answer. prpod runs as a process, as it does in CI, with its own cache directory and key.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::{context, plugin_file};

/// A scratch HOME (for the default key file), a cache directory and a PR context file.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let s = Sandbox { dir: tempfile::tempdir().unwrap() };
        std::fs::write(s.ctx(), serde_json::to_vec(&context(Some(42), "feature/login")).unwrap()).unwrap();
        s
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn components(&self) -> PathBuf {
        self.cache().join("components")
    }

    fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx.json")
    }

    fn command(&self, plugin: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_prpod"));
        c.args(["plugin", "call", "tag-policy", plugin, "--image", "r.example/web", "--context"])
            .arg(self.ctx())
            .env("HOME", self.home())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("PRPOD_CACHE_KEY")
            .env_remove("PRPOD_CONFIG")
            .env("PRPOD_CACHE_DIR", self.cache())
            .env("PRPOD_LOG", "prpod=debug");
        c
    }

    /// Runs a tag-policy call; asserts it succeeded and returns (primary tag, stderr).
    fn call(&self, plugin: &str) -> (String, String) {
        let out = self.command(plugin).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "prpod failed: {stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["primary"].as_str().unwrap().to_string(), stderr)
    }

    /// The one entry of `plugin` (by the sha256 in its name).
    fn entry_of(&self, sha256: &str) -> PathBuf {
        let found: Vec<PathBuf> = std::fs::read_dir(self.components())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(sha256))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found.into_iter().next().unwrap()
    }
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn builtin_sha256() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(prpod::plugins::reference::builtin("tag-default").unwrap()))
}

fn compiles(stderr: &str) -> usize {
    stderr.matches("compiling plugin").count()
}

#[test]
fn a_tampered_entry_is_never_run_and_is_replaced() {
    let s = Sandbox::new();
    let (primary, stderr) = s.call("builtin:tag-default");
    assert_eq!((primary.as_str(), compiles(&stderr)), ("pr-42", 1));
    let entry = s.entry_of(&builtin_sha256());
    // The attacker's payload: the middle of the compiled code overwritten with `int3`s.
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 4096].fill(0xcc);
    std::fs::write(&entry, &bytes).unwrap();

    let (primary, stderr) = s.call("builtin:tag-default");
    assert_eq!(primary, "pr-42");
    assert!(stderr.contains("MAC does not match"), "{stderr}");
    assert_eq!(compiles(&stderr), 1, "recompiled");
    assert_ne!(std::fs::read(&entry).unwrap(), bytes, "the entry was replaced");
    // And from then on it loads from the cache again.
    let (_, stderr) = s.call("builtin:tag-default");
    assert_eq!(compiles(&stderr), 0, "{stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");
}

#[test]
fn flipped_bytes_never_crash_and_are_repaired() {
    let s = Sandbox::new();
    s.call("builtin:tag-default");
    let entry = s.entry_of(&builtin_sha256());
    let mut bytes = std::fs::read(&entry).unwrap();
    let at = bytes.len() / 3;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&entry, &bytes).unwrap();
    for _ in 0..2 {
        let (primary, _) = s.call("builtin:tag-default");
        assert_eq!(primary, "pr-42");
    }
}

#[test]
fn another_plugins_entry_under_this_name_is_refused() {
    let s = Sandbox::new();
    let hostile = plugin_file("test-hostile");
    let hostile_ref = hostile.to_str().unwrap();
    s.call(hostile_ref);
    s.call("builtin:tag-default");
    let victim = s.entry_of(&builtin_sha256());
    // Plugin B's compiled code copied under plugin A's name.
    std::fs::copy(s.entry_of(&sha256_of(&hostile)), &victim).unwrap();
    // Branch `trap` makes test-hostile trap; tag-default answers normally.
    std::fs::write(s.ctx(), serde_json::to_vec(&context(Some(42), "trap")).unwrap()).unwrap();
    let out = s.command("builtin:tag-default").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ran another plugin's code: {stderr}");
    assert!(stderr.contains("MAC does not match"), "{stderr}");
}

#[test]
fn entries_written_with_another_key_are_refused() {
    let s = Sandbox::new();
    let out = s.command("builtin:tag-default").env("PRPOD_CACHE_KEY", "key-of-a-trusted-ci-job-0001").output().unwrap();
    assert!(out.status.success());
    let out = s.command("builtin:tag-default").env("PRPOD_CACHE_KEY", "key-of-a-forked-pr-job-00002").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("MAC does not match"), "{stderr}");
}

#[test]
fn the_default_key_is_private_and_outside_the_cache() {
    let s = Sandbox::new();
    s.call("builtin:tag-default");
    let key = s.home().join(".config/prpod/cache-key");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert!(!key.starts_with(s.cache()));
    let entry_mode = std::fs::metadata(s.entry_of(&builtin_sha256())).unwrap().mode() & 0o777;
    assert_eq!(entry_mode, 0o600);
    assert_eq!(std::fs::metadata(s.components()).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn a_directory_others_can_write_is_not_used() {
    let s = Sandbox::new();
    std::fs::create_dir_all(s.components()).unwrap();
    std::fs::set_permissions(s.components(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (primary, stderr) = s.call("builtin:tag-default");
    assert_eq!(primary, "pr-42");
    assert!(stderr.contains("writable by group or others"), "{stderr}");
    assert_eq!(std::fs::read_dir(s.components()).unwrap().count(), 0, "nothing was written there");
}

#[test]
fn a_directory_owned_by_another_user_is_not_used() {
    let s = Sandbox::new();
    std::fs::create_dir_all(s.components()).unwrap();
    // `nobody`; the tests run as root (the service world needs it), so chown works.
    std::os::unix::fs::chown(s.components(), Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(s.components(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (primary, stderr) = s.call("builtin:tag-default");
    assert_eq!(primary, "pr-42");
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
    assert_eq!(std::fs::read_dir(s.components()).unwrap().count(), 0, "nothing was written there");
}

#[test]
fn planted_symlinks_are_replaced_not_followed() {
    let s = Sandbox::new();
    let victim = s.dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // Learn the entry's name, then empty the cache and plant links at every name prpod uses:
    // the entry, its lock, and the temporary names an older prpod used.
    s.call("builtin:tag-default");
    let entry = s.entry_of(&builtin_sha256());
    std::fs::remove_dir_all(s.components()).unwrap();
    std::fs::create_dir(s.components()).unwrap();
    std::fs::set_permissions(s.components(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut lock = entry.clone().into_os_string();
    lock.push(".lock");
    std::os::unix::fs::symlink(&victim, &entry).unwrap();
    std::os::unix::fs::symlink(&victim, PathBuf::from(lock)).unwrap();
    for pid in 1..200 {
        std::os::unix::fs::symlink(&victim, s.components().join(format!(".tmp-{pid}-ThreadId1"))).unwrap();
    }
    let (primary, _) = s.call("builtin:tag-default");
    assert_eq!(primary, "pr-42");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "a symlink was followed");
    assert!(!std::fs::symlink_metadata(&entry).unwrap().file_type().is_symlink(), "the entry is a real file now");
}

#[test]
fn fifty_processes_on_an_empty_cache_compile_once() {
    let s = Sandbox::new();
    let children: Vec<_> = (0..50)
        .map(|_| {
            s.command("builtin:tag-default")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let mut total = 0;
    for out in &outs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["primary"], "pr-42");
        total += compiles(&stderr);
    }
    assert_eq!(total, 1, "compiled {total} times");
}

/// Runs `cmd`, killing it after `secs` seconds: a hang is a failure, not a stuck test.
fn output_within(mut cmd: Command, secs: u64) -> Output {
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(out) => out,
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("prpod did not finish within {secs} s");
        }
    }
}

fn make_fifo(path: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, path, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0)
        .unwrap();
}

#[test]
fn a_fifo_as_the_key_file_is_refused_at_once() {
    let s = Sandbox::new();
    let key = s.home().join(".config/prpod/cache-key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    make_fifo(&key);
    let out = output_within(s.command("builtin:tag-default"), 20);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("FIFO"), "{stderr}");
}

#[test]
fn a_huge_key_file_is_refused_unread() {
    let s = Sandbox::new();
    let key = s.home().join(".config/prpod/cache-key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&key).unwrap();
    f.set_len(100 << 20).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = output_within(s.command("builtin:tag-default"), 20);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("larger than the 4 KiB"), "{stderr}");
}

#[test]
fn a_sparse_one_tib_entry_is_refused_unread() {
    let s = Sandbox::new();
    s.call("builtin:tag-default");
    let entry = s.entry_of(&builtin_sha256());
    std::fs::OpenOptions::new().write(true).open(&entry).unwrap().set_len(1 << 40).unwrap();
    let out = output_within(s.command("builtin:tag-default"), 30);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("refusing plugin cache entry") && stderr.contains("larger than"), "{stderr}");
    assert_eq!(compiles(&stderr), 1, "recompiled");
    assert!(std::fs::metadata(&entry).unwrap().len() < 1 << 30, "the entry was replaced");
}

#[test]
fn an_empty_cache_key_variable_counts_as_unset() {
    let s = Sandbox::new();
    for round in 0..2 {
        let out = s.command("builtin:tag-default").env("PRPOD_CACHE_KEY", "").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("PRPOD_CACHE_KEY"), "{stderr}");
        assert_eq!(compiles(&stderr), if round == 0 { 1 } else { 0 }, "round {round}: {stderr}");
    }
}
