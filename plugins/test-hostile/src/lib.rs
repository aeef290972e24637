//! A hostile tag-policy plugin for the host's sandbox tests. `compute-tags` picks its
//! misbehaviour from `ctx.branch`:
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
//! | `trap` | executes `unreachable` |
//! | `panic` | `panic!("hostile panic")` |
//! | `bad-tag` | returns primary tag `not a valid tag!` |
//! | anything else | the normal tags of the seed scheme |
//!
//! `release` returns name and namespace `Bad_Release` for branch `bad-release`, else the normal
//! release of the seed scheme.

wit_bindgen::generate!({
    path: "../../wit",
    world: "tag-policy",
});

use prpod::plugin::logging::{Level, log};
use std::hint::black_box;

fn label<'a>(ctx: &'a PrContext, key: &str) -> Option<&'a str> {
    ctx.labels.iter().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn normal_tags(ctx: &PrContext) -> Result<TagSet, String> {
    let t = tag_scheme::compute_tags(ctx.number, &ctx.branch, ctx.base_branch.as_deref(), &ctx.sha)?;
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

fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

struct Hostile;

impl Guest for Hostile {
    fn compute_tags(ctx: PrContext, _image_repository: String) -> Result<TagSet, String> {
        log(Level::Debug, &format!("test-hostile: compute-tags for branch {:?}", ctx.branch));
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
            "trap" => trap(),
            "panic" => panic!("hostile panic"),
            "bad-tag" => Ok(only("not a valid tag!")),
            _ => normal_tags(&ctx),
        }
    }

    fn release(ctx: PrContext) -> Result<ReleaseTarget, String> {
        log(Level::Debug, &format!("test-hostile: release for branch {:?}", ctx.branch));
        if ctx.branch == "bad-release" {
            return Ok(ReleaseTarget { name: "Bad_Release".into(), namespace: "Bad_Release".into() });
        }
        let (name, namespace) = tag_scheme::release(ctx.number, &ctx.branch)?;
        Ok(ReleaseTarget { name, namespace })
    }
}

export!(Hostile);
