//! A hostile plugin for the host's sandbox tests. It implements all three worlds (tag-policy,
//! chart-generator and verifier) and picks its misbehaviour from `ctx.branch`.
//!
//! In every hook:
//!
//! | branch | does |
//! | --- | --- |
//! | `sleep` | sleeps for an hour (`wasi:clocks` subscribe + `pollable.block`) |
//! | `block` | blocks on a pollable that never becomes ready (a clock 500 years away), through `wasi:io/poll.poll` |
//! | `sleep-loop` | spins for a few milliseconds, sleeps 1 ms, forever |
//! | `big-err` | returns `err` of 50 MiB |
//! | `ansi` | writes ESC/OSC sequences to stderr, logs a message with a newline that forges a log line, and returns them in `err` |
//!
//! `compute-tags` also:
//!
//! | branch | does |
//! | --- | --- |
//! | `loop` | loops forever (with a side effect the optimizer keeps) |
//! | `memory` | keeps allocating and touching 16 MiB blocks toward 4 GiB |
//! | `read-file` | reads `/etc/passwd`: `Err("read-file: <error>")`, or Ok with primary tag `leaked` |
//! | `socket` | connects to `127.0.0.1:<n>` from label `port=<n>`: `Err("socket: <error>")`, or Ok with primary tag `connected` |
//! | `env` | reads the variable named by label `env=<NAME>`: `Err("env: not set")`, or Ok with primary tag `leaked-env` |
//! | `print` | prints 100 MiB to stdout in 64 KiB chunks, then returns the normal tags |
//! | `log-flood` | logs 100 messages of 1 MiB each, then returns the normal tags |
//! | `log-lines` | logs the number of empty messages in label `lines=<n>` (default 3 000 000), then returns the normal tags |
//! | `print-lines` | prints as many empty lines to stdout, then returns the normal tags |
//! | `exit` | calls `exit(3)` |
//! | `resource-flood` | opens pollables (`wasi:clocks` subscribe) without closing them, forever |
//! | `huge-random` | asks the host for 1 TiB of random bytes |
//! | `trap` | executes `unreachable` |
//! | `host-info` | asks `prpod:plugin/host` (0.2.0) and `logging.enabled`: primary tag `deadline-<ms>`, extra `memory-<bytes>`, `output-<bytes>`, `prpod-<version with . as ->`, `remaining-ok` when 0 < remaining-ms <= the deadline, `error-logged-<bool>`, `debug-logged-<bool>` |
//! | `panic` | `panic!("hostile panic")` |
//! | `bad-tag` | returns primary tag `not a valid tag!` |
//! | `dup-tags` | returns `pr-7` as primary and twice in extra, `x` twice in extra, `c` twice in cache-from |
//! | `many-tags` | returns 70 distinct tags |
//! | anything else | the normal tags of the seed scheme |
//!
//! `release` returns name and namespace `Bad_Release` for branch `bad-release`, else the normal
//! release of the seed scheme.
//!
//! `generate` returns a small valid chart, or for branch: `file-and-dir` (`templates` as a file
//! and as a directory), `long-name` (a 300-character file name), `chart-yaml-dir`
//! (`Chart.yaml` and `Chart.yaml/x`), `many-files` (1 001 files), `slow-chart` (the valid chart
//! after sleeping for the milliseconds in label `sleep-ms=<n>`).
//!
//! `check-manifests` and `check-release` return no findings, or for branch: `many-findings`
//! (800 000 empty findings), `too-many-findings` (10 001 one-letter findings), `ansi-finding`
//! (one error finding whose message holds escape sequences).

wit_bindgen::generate!({
    path: "../../wit",
    // The three worlds' exports in one world (`include` of all three would import `types`'
    // names three times); the signatures are those of wit/world.wit.
    inline: "
        package prpod:test-hostile;
        world hostile {
            import prpod:plugin/logging@0.2.0;
            import prpod:plugin/host@0.2.0;
            use prpod:plugin/types@0.2.0.{pr-context, tag-set, release-target, app-spec, chart-file, manifest, finding, release-status};
            export compute-tags: func(ctx: pr-context, image-repository: string) -> result<tag-set, string>;
            export release: func(ctx: pr-context) -> result<release-target, string>;
            export generate: func(ctx: pr-context, app: app-spec) -> result<list<chart-file>, string>;
            export check-manifests: func(ctx: pr-context, manifests: list<manifest>) -> result<list<finding>, string>;
            export check-release: func(ctx: pr-context, status: release-status) -> result<list<finding>, string>;
        }
    ",
    world: "hostile",
    generate_all,
});

use prpod::plugin::logging::{Level, log};
use prpod::plugin::types::Severity;
use std::hint::black_box;
use std::time::Duration;

/// Escape sequences a terminal would act on: clear screen, set the title, write the clipboard.
const ANSI: &str = "\x1b[2J\x1b]0;pwned\x07\x1b]52;c;cHduZWQ=\x07";

fn label<'a>(ctx: &'a PrContext, key: &str) -> Option<&'a str> {
    ctx.labels.iter().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn normal_tags(ctx: &PrContext) -> Result<TagSet, String> {
    let t = tag_scheme::compute_tags(
        ctx.number,
        tag_scheme::Branch::own(&ctx.branch),
        ctx.base_branch.as_deref(),
        &ctx.sha,
    )?;
    Ok(TagSet { primary: t.primary, extra: t.extra, cache_from: t.cache_from, cache_to: t.cache_to })
}

fn only(tag: &str) -> TagSet {
    TagSet { primary: tag.into(), extra: vec![], cache_from: vec![], cache_to: None }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// The misbehaviours every hook has; `None` when `ctx.branch` names none of them.
fn common(ctx: &PrContext) -> Option<String> {
    match ctx.branch.as_str() {
        "sleep" => {
            std::thread::sleep(Duration::from_secs(3600));
            Some("sleep: woke up after an hour".into())
        }
        "block" => {
            let never = wasi::clocks::monotonic_clock::subscribe_duration(500 * 365 * 24 * 3600 * 1_000_000_000);
            wasi::io::poll::poll(&[&never]);
            Some("block: the pollable became ready".into())
        }
        "sleep-loop" => loop {
            let mut n: u64 = 0;
            for _ in 0..2_000_000 {
                n = black_box(n.wrapping_add(1));
            }
            std::thread::sleep(Duration::from_millis(1));
        },
        "big-err" => Some("e".repeat(50 << 20)),
        "ansi" => {
            eprintln!("stderr says {ANSI}");
            log(Level::Warn, "innocent\n2026-11-28T00:00:00Z  WARN prpod: forged line");
            Some(format!("ansi: {ANSI}"))
        }
        _ => None,
    }
}

fn eat_memory() -> Result<TagSet, String> {
    const BLOCK: usize = 16 << 20;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    // 4 GiB is the whole 32-bit address space: allocation fails (and traps) before this ends.
    for _ in 0..(4u64 << 30) / BLOCK as u64 {
        let mut b: Vec<u8> = Vec::with_capacity(BLOCK);
        for _ in (0..BLOCK).step_by(4096) {
            b.push(1);
            b.extend(std::iter::repeat_n(0u8, 4095));
        }
        blocks.push(black_box(b));
    }
    Err(format!("memory: allocated {} blocks without hitting a limit", blocks.len()))
}

fn print_flood() -> Result<(), String> {
    use std::io::Write;
    let chunk = vec![b'x'; 64 << 10];
    let mut out = std::io::stdout().lock();
    for _ in 0..(100usize << 20) / chunk.len() {
        out.write_all(&chunk).map_err(|e| format!("print: {e}"))?;
    }
    out.flush().map_err(|e| format!("print: {e}"))
}

fn lines(ctx: &PrContext) -> u64 {
    label(ctx, "lines").and_then(|v| v.parse().ok()).unwrap_or(3_000_000)
}

fn print_lines(n: u64) -> Result<(), String> {
    use std::io::Write;
    let chunk = vec![b'\n'; 64 << 10];
    let mut out = std::io::stdout().lock();
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..k]).map_err(|e| format!("print-lines: {e}"))?;
        left -= k as u64;
    }
    out.flush().map_err(|e| format!("print-lines: {e}"))
}

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

fn file(path: &str, content: &str) -> ChartFile {
    ChartFile { path: path.into(), content: content.as_bytes().to_vec() }
}

fn valid_chart() -> Vec<ChartFile> {
    vec![
        file("Chart.yaml", "apiVersion: v2\nname: hostile\nversion: 0.1.0\n"),
        file("templates/configmap.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hostile\n"),
    ]
}

fn findings(ctx: &PrContext) -> Result<Vec<Finding>, String> {
    if let Some(e) = common(ctx) {
        return Err(e);
    }
    let finding = |message: &str| Finding {
        severity: Severity::Error,
        rule: "hostile".into(),
        message: message.into(),
        object: None,
    };
    Ok(match ctx.branch.as_str() {
        "many-findings" => (0..800_000)
            .map(|_| Finding { severity: Severity::Info, rule: String::new(), message: String::new(), object: None })
            .collect(),
        "too-many-findings" => (0..10_001).map(|_| finding("f")).collect(),
        "ansi-finding" => vec![finding(&format!("look: {ANSI}"))],
        _ => vec![],
    })
}

struct Hostile;

impl Guest for Hostile {
    fn compute_tags(ctx: PrContext, _image_repository: String) -> Result<TagSet, String> {
        log(Level::Debug, &format!("test-hostile: compute-tags for branch {:?}", ctx.branch));
        if let Some(e) = common(&ctx) {
            return Err(e);
        }
        match ctx.branch.as_str() {
            "loop" => spin(),
            "memory" => eat_memory(),
            "read-file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => {
                    black_box(text);
                    Ok(only("leaked"))
                }
                Err(e) => Err(format!("read-file: {e}")),
            },
            "socket" => {
                let port: u16 = label(&ctx, "port")
                    .ok_or("socket: no port=<n> label")?
                    .parse()
                    .map_err(|e| format!("socket: bad port label: {e}"))?;
                match std::net::TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => {
                        drop(s);
                        Ok(only("connected"))
                    }
                    Err(e) => Err(format!("socket: {e}")),
                }
            }
            "env" => {
                let name = label(&ctx, "env").ok_or("env: no env=<NAME> label")?;
                match std::env::var_os(name) {
                    Some(v) => {
                        black_box(v);
                        Ok(only("leaked-env"))
                    }
                    None => Err("env: not set".into()),
                }
            }
            "print" => {
                print_flood()?;
                normal_tags(&ctx)
            }
            "log-flood" => {
                let message = "x".repeat(1 << 20);
                for _ in 0..100 {
                    log(Level::Info, &message);
                }
                normal_tags(&ctx)
            }
            "log-lines" => {
                for _ in 0..lines(&ctx) {
                    log(Level::Info, "");
                }
                normal_tags(&ctx)
            }
            "print-lines" => {
                print_lines(lines(&ctx))?;
                normal_tags(&ctx)
            }
            "exit" => std::process::exit(3),
            "resource-flood" => loop {
                std::mem::forget(wasi::clocks::monotonic_clock::subscribe_duration(1_000_000_000));
            },
            "huge-random" => {
                let bytes = wasi::random::random::get_random_bytes(1 << 40);
                Err(format!("huge-random: got {} bytes", bytes.len()))
            }
            "trap" => trap(),
            "host-info" => {
                let limits = prpod::plugin::host::limits();
                let remaining = prpod::plugin::host::remaining_ms();
                let mut extra = vec![
                    format!("memory-{}", limits.memory_bytes),
                    format!("output-{}", limits.output_bytes),
                    format!("prpod-{}", prpod::plugin::host::prpod_version().replace('.', "-")),
                    format!("error-logged-{}", prpod::plugin::logging::enabled(Level::Error)),
                    format!("debug-logged-{}", prpod::plugin::logging::enabled(Level::Debug)),
                ];
                if remaining > 0 && remaining <= limits.deadline_ms {
                    extra.push("remaining-ok".into());
                }
                Ok(TagSet {
                    primary: format!("deadline-{}", limits.deadline_ms),
                    extra,
                    cache_from: vec![],
                    cache_to: None,
                })
            }
            "panic" => panic!("hostile panic"),
            "bad-tag" => Ok(only("not a valid tag!")),
            "dup-tags" => Ok(TagSet {
                primary: "pr-7".into(),
                extra: vec!["pr-7".into(), "x".into(), "x".into()],
                cache_from: vec!["c".into(), "c".into()],
                cache_to: Some("c".into()),
            }),
            "many-tags" => Ok(TagSet {
                primary: "t0".into(),
                extra: (1..70).map(|i| format!("t{i}")).collect(),
                cache_from: vec![],
                cache_to: None,
            }),
            _ => normal_tags(&ctx),
        }
    }

    fn release(ctx: PrContext) -> Result<ReleaseTarget, String> {
        log(Level::Debug, &format!("test-hostile: release for branch {:?}", ctx.branch));
        if let Some(e) = common(&ctx) {
            return Err(e);
        }
        if ctx.branch == "bad-release" {
            return Ok(ReleaseTarget { name: "Bad_Release".into(), namespace: "Bad_Release".into() });
        }
        let (name, namespace) = tag_scheme::release(&ctx.repository, ctx.number, tag_scheme::Branch::own(&ctx.branch))?;
        Ok(ReleaseTarget { name, namespace })
    }

    fn generate(ctx: PrContext, _app: AppSpec) -> Result<Vec<ChartFile>, String> {
        if let Some(e) = common(&ctx) {
            return Err(e);
        }
        let mut chart = valid_chart();
        match ctx.branch.as_str() {
            "file-and-dir" => chart.push(file("templates", "a file where a directory must be")),
            "long-name" => chart.push(file(&format!("templates/{}.yaml", "n".repeat(300)), "")),
            "chart-yaml-dir" => chart.push(file("Chart.yaml/x", "")),
            "many-files" => chart.extend((0..1001).map(|i| file(&format!("templates/f{i}.yaml"), ""))),
            "slow-chart" => {
                let ms = label(&ctx, "sleep-ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
                std::thread::sleep(Duration::from_millis(ms));
            }
            _ => {}
        }
        Ok(chart)
    }

    fn check_manifests(ctx: PrContext, _manifests: Vec<Manifest>) -> Result<Vec<Finding>, String> {
        findings(&ctx)
    }

    fn check_release(ctx: PrContext, _status: ReleaseStatus) -> Result<Vec<Finding>, String> {
        findings(&ctx)
    }
}

export!(Hostile);
