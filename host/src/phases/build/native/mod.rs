//! The `native` build backend: builds an image from a Dockerfile in-process, without a daemon,
//! privileges or running anything, into an OCI image layout that
//! [`RegistryClient::push`](crate::clients::registry::RegistryClient::push) takes.
//!
//! Supported: `FROM` (an image in a registry, or `scratch`; one stage), `COPY` and `ADD` (local
//! files; `--chown=UID:GID`, `--chmod=OCTAL`), `ENV`, `ARG`, `WORKDIR`, `USER`, `EXPOSE`, `LABEL`,
//! `ENTRYPOINT`, `CMD`, and `.dockerignore`. `RUN` (and anything else) is an error naming the
//! line and the backends that can build it.
//!
//! Reproducible: each COPY/ADD becomes one layer written by [`layer::write_layer`] (sorted
//! entries, fixed mtimes, normalised ownership and modes, fixed gzip), the config carries no
//! build time (`created` is `SOURCE_DATE_EPOCH`, default the epoch) and is serialised in a fixed
//! key order, so the same source gives the same digest on any machine and from any checkout.
//!
//! The base image is never downloaded: only its manifest and config are fetched; its layers
//! stay in the registry and the push mounts them (same registry) or streams them through.

mod context;
mod dockerfile;
mod layer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

pub use dockerfile::{Dockerfile, Instruction};
pub use layer::{BuiltLayer, LayerEntry, LayerKind, write_layer};

use crate::clients::registry::{
    ImageName, ImageReference, OciDescriptor, OciImage, OciImageIndex, OciImageManifest, RegistryClient, RegistryError,
};
use crate::error::{Classify, FailureKind, PhaseError, ResultExt};
use crate::model::Phase;

/// A native build failed.
#[derive(Debug, thiserror::Error)]
pub enum NativeBuildError {
    /// The Dockerfile has something the native backend does not build, or is malformed.
    #[error("{file}:{line}: {message}")]
    Dockerfile {
        /// The Dockerfile's name as the user gave it.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong and what to do.
        message: String,
    },
    /// A COPY/ADD source is missing, excluded, or outside the context.
    #[error("{file}:{line}: {message}")]
    Context {
        /// The Dockerfile.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The Dockerfile or the context could not be read.
    #[error("failed to read {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the image layout failed (disk full, permissions).
    #[error("failed to write the image to {}: {source}", path.display())]
    Write {
        /// The layout directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Fetching the base image failed.
    #[error("failed to fetch the base image {image}")]
    Base {
        /// The FROM reference.
        image: String,
        /// The cause.
        #[source]
        source: Box<RegistryError>,
    },
}

impl NativeBuildError {
    pub(crate) fn dockerfile(file: &str, line: usize, message: &str) -> NativeBuildError {
        NativeBuildError::Dockerfile { file: file.to_string(), line, message: message.to_string() }
    }
}

impl Classify for NativeBuildError {
    fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            NativeBuildError::Dockerfile { .. } | NativeBuildError::Context { .. } | NativeBuildError::Read { .. } => {
                None
            }
            NativeBuildError::Write { .. } => Some(FailureKind::Internal),
            NativeBuildError::Base { source, .. } => source.failure_kind(),
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct NativeBuildRequest {
    /// The build context directory.
    pub context_dir: PathBuf,
    /// The Dockerfile (relative paths are relative to the context).
    pub dockerfile: PathBuf,
    /// `--build-arg` values (only ARGs the Dockerfile declares are used, as in docker).
    pub build_args: BTreeMap<String, String>,
    /// Labels set on the image after the Dockerfile's own (prpod's `org.opencontainers.image.source`).
    pub labels: BTreeMap<String, String>,
    /// `os/arch[/variant]` to pick from a multi-platform base (default: this machine's, linux).
    pub platform: Option<String>,
    /// Where to write the OCI image layout (emptied first).
    pub out_dir: PathBuf,
    /// Timestamp for file mtimes and the config's `created` (default 0, the epoch).
    pub source_date_epoch: Option<u64>,
}

/// Progress of a native build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// An instruction is being applied.
    Step {
        /// Its line.
        line: usize,
        /// `COPY . /app` (variables not expanded).
        instruction: String,
    },
    /// A layer was written.
    Layer {
        /// Its digest.
        digest: String,
        /// Its size.
        size: u64,
    },
}

/// A finished native build.
#[derive(Debug, Clone)]
pub struct NativeBuildOutput {
    /// The image, as an OCI layout in the request's `out_dir`; push it with
    /// [`RegistryClient::push`].
    pub image: OciImage,
    /// The base image pinned by digest (`None` for `scratch`).
    pub base: Option<String>,
    /// Layers this build wrote (the base's are not counted).
    pub layers_built: usize,
}

/// Reads and checks a Dockerfile for the native backend: `Ok` when it can build it, otherwise the
/// error the build would fail with (a RUN line, a second FROM, an unsupported instruction). What
/// `--backend auto` uses to choose.
pub fn check_dockerfile(path: &Path) -> Result<Dockerfile, NativeBuildError> {
    let text = crate::input::read_text_file(path, crate::input::MAX_CONFIG_BYTES, "Dockerfile")
        .map_err(|e| NativeBuildError::Read { path: path.to_path_buf(), source: e.into_io() })?;
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let d = Dockerfile::parse(&name, &text)?;
    match d.native_blocker(&name) {
        Some(e) => Err(e),
        None => Ok(d),
    }
}

/// The platform of this machine as OCI names it (`linux/amd64`).
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("linux/{arch}")
}

struct State {
    file: String,
    vars: BTreeMap<String, String>,
    env_order: Vec<(String, String)>,
    workdir: String,
    config: Map<String, Value>,
    cmd_set: bool,
    history: Vec<Value>,
    layers: Vec<OciDescriptor>,
    diff_ids: Vec<String>,
    created: String,
    mtime: u64,
}

/// Builds the image `req` describes. Base images are resolved through `registry` (manifest and
/// config only). `progress` sees each step and layer.
pub async fn build(
    req: &NativeBuildRequest,
    registry: &RegistryClient,
    progress: &(dyn Fn(&BuildEvent) + Send + Sync),
) -> Result<NativeBuildOutput, NativeBuildError> {
    let dockerfile_path =
        if req.dockerfile.is_absolute() { req.dockerfile.clone() } else { req.context_dir.join(&req.dockerfile) };
    let file = req.dockerfile.display().to_string();
    let text = crate::input::read_text_file(&dockerfile_path, crate::input::MAX_CONFIG_BYTES, "Dockerfile")
        .map_err(|e| NativeBuildError::Read { path: dockerfile_path.clone(), source: e.into_io() })?;
    let parsed = Dockerfile::parse(&file, &text)?;
    if let Some(e) = parsed.native_blocker(&file) {
        return Err(e);
    }
    let ignore = context::Ignore::load(&req.context_dir).map_err(|m| NativeBuildError::Context {
        file: ".dockerignore".into(),
        line: 0,
        message: m,
    })?;
    let out = &req.out_dir;
    if out.exists() {
        // Only ever replace an earlier image layout (or an empty directory): a mistyped out_dir
        // must not delete someone's files.
        let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty && !out.join("oci-layout").is_file() {
            return Err(NativeBuildError::Write {
                path: out.clone(),
                source: std::io::Error::other(
                    "the directory exists and is not an OCI image layout; refusing to replace it",
                ),
            });
        }
        std::fs::remove_dir_all(out).map_err(|source| NativeBuildError::Write { path: out.clone(), source })?;
    }
    std::fs::create_dir_all(out).map_err(|source| NativeBuildError::Write { path: out.clone(), source })?;

    let epoch = req.source_date_epoch.unwrap_or(0);
    let created = rfc3339(epoch);
    let err = |line: usize, m: String| NativeBuildError::Dockerfile { file: file.clone(), line, message: m };

    // ARGs before FROM: usable in FROM only.
    let mut global_args: BTreeMap<String, String> = BTreeMap::new();
    let mut st: Option<State> = None;
    let mut base: Option<(ImageName, String)> = None;
    let mut base_layers: Vec<OciDescriptor> = Vec::new();
    let mut context_entries: Option<Vec<context::Entry>> = None;

    for ins in &parsed.instructions {
        progress(&BuildEvent::Step { line: ins.line, instruction: format!("{} {}", ins.keyword, ins.args) });
        let line = ins.line;
        match (ins.keyword.as_str(), st.as_mut()) {
            ("ARG", None) => {
                for (k, v) in arg_decl(&ins.args).map_err(|m| err(line, m))? {
                    let v = req.build_args.get(&k).cloned().or(v).unwrap_or_default();
                    global_args.insert(k, v);
                }
            }
            ("FROM", None) => {
                let words = dockerfile::words(&ins.args).map_err(|m| err(line, m))?;
                let words: Vec<&String> = words.iter().filter(|w| !w.starts_with("--platform")).collect();
                let image = words.first().ok_or_else(|| err(line, "FROM needs an image".into()))?;
                let image = dockerfile::expand(image, &global_args).map_err(|m| err(line, m))?;
                let mut state = State {
                    file: file.clone(),
                    vars: BTreeMap::new(),
                    env_order: Vec::new(),
                    workdir: "/".into(),
                    config: Map::new(),
                    cmd_set: false,
                    history: Vec::new(),
                    layers: Vec::new(),
                    diff_ids: Vec::new(),
                    created: created.clone(),
                    mtime: epoch,
                };
                if image == "scratch" {
                    let platform = req.platform.clone().unwrap_or_else(host_platform);
                    let mut parts = platform.split('/');
                    let (os, arch) = (parts.next().unwrap_or("linux"), parts.next().unwrap_or("amd64"));
                    state.config = serde_json::from_value(json!({
                        "created": created, "architecture": arch, "os": os,
                        "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": [],
                    }))
                    .expect("an object");
                    if let Some(variant) = parts.next() {
                        state.config.insert("variant".into(), json!(variant));
                    }
                } else {
                    let (name, digest, manifest, config) = fetch_base(registry, &image, req.platform.as_deref())
                        .await
                        .map_err(|source| NativeBuildError::Base { image: image.clone(), source: Box::new(source) })?;
                    state.config = config;
                    state.config.insert("created".into(), json!(created));
                    // Keep the base's history and diff_ids; ours are appended.
                    state.diff_ids = state.config["rootfs"]["diff_ids"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                        .unwrap_or_default();
                    state.history = state.config.get("history").and_then(|h| h.as_array()).cloned().unwrap_or_default();
                    if let Some(env) = state.config["config"]["Env"].as_array() {
                        for kv in env.iter().filter_map(Value::as_str) {
                            if let Some((k, v)) = kv.split_once('=') {
                                state.env_order.push((k.to_string(), v.to_string()));
                                state.vars.insert(k.to_string(), v.to_string());
                            }
                        }
                    }
                    if let Some(wd) = state.config["config"]["WorkingDir"].as_str().filter(|w| !w.is_empty()) {
                        state.workdir = wd.to_string();
                    }
                    base_layers = manifest.layers.iter().cloned().map(oci_layer).collect();
                    base = Some((name.clone(), format!("{}@{digest}", name)));
                }
                st = Some(state);
            }
            (k, None) => return Err(err(line, format!("{k} before FROM"))),
            (_, Some(state)) => {
                let entries =
                    match ins.keyword.as_str() {
                        "COPY" | "ADD" => {
                            if context_entries.is_none() {
                                context_entries =
                                    Some(context::walk(&req.context_dir, &ignore).map_err(|m| {
                                        NativeBuildError::Context { file: file.clone(), line, message: m }
                                    })?);
                            }
                            context_entries.as_deref()
                        }
                        _ => None,
                    };
                apply(state, ins, req, entries, out, progress)?;
            }
        }
    }
    let mut state = st.ok_or_else(|| err(1, "no FROM instruction".into()))?;
    let layers_built = state.layers.len();
    let cfg = state.config.entry("config").or_insert_with(|| json!({}));
    if state.env_order.is_empty() {
        if let Some(o) = cfg.as_object_mut() {
            o.remove("Env");
        }
    } else {
        cfg["Env"] = json!(state.env_order.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>());
    }
    if !req.labels.is_empty() {
        // Like `docker build --label`: over whatever the Dockerfile's LABELs said.
        let cfg = state.config.entry("config").or_insert_with(|| json!({}));
        let labels = cfg.as_object_mut().expect("object").entry("Labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        for (k, v) in &req.labels {
            labels[k.as_str()] = json!(v);
        }
        sort_object(labels);
    }
    state.config.insert("rootfs".into(), json!({"type": "layers", "diff_ids": state.diff_ids}));
    state.config.insert("history".into(), Value::Array(state.history));
    let config_bytes = serde_json::to_vec(&Value::Object(state.config)).expect("serialisable");
    let mut all_layers = base_layers;
    all_layers.extend(state.layers);
    let remote: BTreeMap<String, ImageName> = match &base {
        Some((name, _)) => all_layers
            .iter()
            .filter(|d| crate::clients::registry::OciImage::layout_blob(out, &d.digest).is_none())
            .map(|d| (d.digest.clone(), name.clone()))
            .collect(),
        None => BTreeMap::new(),
    };
    let image = OciImage::write(out, &config_bytes, all_layers, &remote, None).map_err(|e| match e {
        RegistryError::Io { path, source, .. } => NativeBuildError::Write { path, source },
        other => NativeBuildError::Write { path: out.clone(), source: std::io::Error::other(other.to_string()) },
    })?;
    Ok(NativeBuildOutput { image, base: base.map(|(_, pinned)| pinned), layers_built })
}

/// `ARG NAME[=default] ...`.
fn arg_decl(args: &str) -> Result<Vec<(String, Option<String>)>, String> {
    dockerfile::words(args)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), Some(v.to_string()))),
            None => Ok((w, None)),
        })
        .collect()
}

/// Base layers keep their bytes and digests; Docker media types become their OCI equivalents so
/// the manifest is one consistent OCI manifest.
fn oci_layer(mut d: OciDescriptor) -> OciDescriptor {
    d.media_type = match d.media_type.as_str() {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar".into(),
        _ => d.media_type,
    };
    d
}

/// Resolves `image` to one platform's manifest and config.
async fn fetch_base(
    registry: &RegistryClient,
    image: &str,
    platform: Option<&str>,
) -> Result<(ImageName, String, OciImageManifest, Map<String, Value>), RegistryError> {
    let reference = ImageReference::parse(image)?.value;
    let mut raw = registry.fetch_manifest(&reference).await?;
    let index_types =
        ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
    if index_types.contains(&raw.media_type.as_str()) {
        let want = platform.map_or_else(host_platform, str::to_string);
        let index: OciImageIndex = serde_json::from_slice(&raw.bytes).map_err(|e| RegistryError::Protocol {
            host: reference.name.api_host().into(),
            what: format!("read the index of {reference}"),
            detail: e.to_string(),
        })?;
        let entry = index
            .manifests
            .iter()
            .find(|m| {
                m.platform.as_ref().is_some_and(|p| {
                    let name = format!("{}/{}", p.os, p.architecture);
                    want == name || p.variant.as_deref().is_some_and(|v| want == format!("{name}/{v}"))
                })
            })
            .ok_or_else(|| RegistryError::NotFound {
                host: reference.name.api_host().into(),
                what: format!("platform {want} in {reference}"),
                detail: "the image index has no manifest for it; set the image platform".into(),
            })?;
        let pinned = ImageReference { name: reference.name.clone(), tag: None, digest: Some(entry.digest.clone()) };
        raw = registry.fetch_manifest(&pinned).await?;
    }
    let manifest: OciImageManifest = serde_json::from_slice(&raw.bytes).map_err(|e| RegistryError::Protocol {
        host: reference.name.api_host().into(),
        what: format!("read the manifest of {reference}"),
        detail: e.to_string(),
    })?;
    let config = registry.fetch_blob(&reference.name, &manifest.config.digest).await?;
    let config: Map<String, Value> = serde_json::from_slice(&config).map_err(|e| RegistryError::Protocol {
        host: reference.name.api_host().into(),
        what: format!("read the config of {reference}"),
        detail: e.to_string(),
    })?;
    Ok((reference.name, raw.digest, manifest, config))
}

fn rfc3339(epoch: u64) -> String {
    // Days to civil date (Howard Hinnant's algorithm); no chrono dependency for one timestamp.
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Applies one instruction after FROM.
fn apply(
    st: &mut State,
    ins: &Instruction,
    req: &NativeBuildRequest,
    context_entries: Option<&[context::Entry]>,
    out: &Path,
    progress: &(dyn Fn(&BuildEvent) + Send + Sync),
) -> Result<(), NativeBuildError> {
    let line = ins.line;
    let file = st.file.clone();
    let err = |m: String| NativeBuildError::Dockerfile { file: file.clone(), line, message: m };
    let expand = |s: &str, vars: &BTreeMap<String, String>| dockerfile::expand(s, vars).map_err(err);
    let created_by = format!("{} {}", ins.keyword, ins.args);
    let cfg = st.config.entry("config").or_insert_with(|| json!({}));
    if !cfg.is_object() {
        *cfg = json!({});
    }
    let mut empty_layer = true;
    match ins.keyword.as_str() {
        "ARG" => {
            for (k, v) in arg_decl(&ins.args).map_err(err)? {
                let v = match req.build_args.get(&k) {
                    Some(given) => given.clone(),
                    None => v.map(|v| expand(&v, &st.vars)).transpose()?.unwrap_or_default(),
                };
                // An ENV of the same name wins over the ARG (docker's rule).
                if !st.env_order.iter().any(|(e, _)| *e == k) {
                    st.vars.insert(k, v);
                }
            }
        }
        "ENV" => {
            for (k, v) in dockerfile::pairs(&ins.args, true).map_err(err)? {
                let v = expand(&v, &st.vars)?;
                st.vars.insert(k.clone(), v.clone());
                match st.env_order.iter_mut().find(|(e, _)| *e == k) {
                    Some(slot) => slot.1 = v,
                    None => st.env_order.push((k, v)),
                }
            }
        }
        "LABEL" => {
            let labels = cfg.as_object_mut().expect("object").entry("Labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            for (k, v) in dockerfile::pairs(&ins.args, true).map_err(err)? {
                labels[expand(&k, &st.vars)?] = json!(expand(&v, &st.vars)?);
            }
            sort_object(labels);
        }
        "WORKDIR" => {
            let dir = expand(ins.args.trim(), &st.vars)?;
            st.workdir = format!("/{}", context::image_path(&st.workdir, &dir));
            cfg["WorkingDir"] = json!(st.workdir);
        }
        "USER" => cfg["User"] = json!(expand(ins.args.trim(), &st.vars)?),
        "EXPOSE" => {
            let ports = cfg.as_object_mut().expect("object").entry("ExposedPorts").or_insert_with(|| json!({}));
            if !ports.is_object() {
                *ports = json!({});
            }
            for p in dockerfile::words(&ins.args).map_err(err)? {
                let p = expand(&p, &st.vars)?;
                let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                if num.parse::<u16>().is_err() || !["tcp", "udp", "sctp"].contains(&proto) {
                    return Err(err(format!("EXPOSE `{p}` is not PORT[/tcp|udp|sctp]")));
                }
                ports[format!("{num}/{proto}")] = json!({});
            }
            sort_object(ports);
        }
        "ENTRYPOINT" | "CMD" => {
            let argv = match dockerfile::json_array(&ins.args) {
                Some(a) => a,
                None if ins.args.trim().is_empty() => Vec::new(),
                None => vec!["/bin/sh".into(), "-c".into(), ins.args.trim().to_string()],
            };
            if ins.keyword == "CMD" {
                cfg["Cmd"] = json!(argv);
                st.cmd_set = true;
            } else {
                cfg["Entrypoint"] = json!(argv);
                // docker: an ENTRYPOINT resets a CMD inherited from the base image.
                if !st.cmd_set {
                    cfg["Cmd"] = Value::Null;
                }
            }
        }
        "COPY" | "ADD" => {
            let entries = copy_entries(st, ins, req, context_entries.unwrap_or_default())?;
            let built = layer::write_layer(out, entries, st.mtime)
                .map_err(|source| NativeBuildError::Write { path: out.to_path_buf(), source })?;
            progress(&BuildEvent::Layer { digest: built.digest.clone(), size: built.size });
            st.diff_ids.push(built.diff_id);
            st.layers.push(OciDescriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                digest: built.digest,
                size: built.size as i64,
                urls: None,
                annotations: None,
                artifact_type: None,
            });
            empty_layer = false;
        }
        other => return Err(err(format!("{other} is not supported by the native backend"))),
    }
    let mut h = json!({"created": st.created, "created_by": created_by});
    if empty_layer {
        h["empty_layer"] = json!(true);
    }
    st.history.push(h);
    Ok(())
}

fn sort_object(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        let mut items: Vec<(String, Value)> = std::mem::take(o).into_iter().collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        o.extend(items);
    }
}

/// The layer entries of one COPY/ADD.
fn copy_entries(
    st: &State,
    ins: &Instruction,
    req: &NativeBuildRequest,
    context_entries: &[context::Entry],
) -> Result<Vec<LayerEntry>, NativeBuildError> {
    let line = ins.line;
    let file = st.file.clone();
    let err = |m: String| NativeBuildError::Dockerfile { file: file.clone(), line, message: m };
    let ctx_err = |m: String| NativeBuildError::Context { file: file.clone(), line, message: m };
    let mut args = match dockerfile::json_array(&ins.args) {
        Some(a) => a,
        None => dockerfile::words(&ins.args).map_err(err)?,
    };
    let (mut uid, mut gid, mut chmod) = (0u64, 0u64, None::<u32>);
    while let Some(flag) = args.first().filter(|a| a.starts_with("--")).cloned() {
        args.remove(0);
        let (name, value) = flag.split_once('=').unwrap_or((&flag, ""));
        let value = dockerfile::expand(value, &st.vars).map_err(err)?;
        match name {
            "--chown" => {
                let (u, g) = value.split_once(':').unwrap_or((&value, &value));
                let id = |s: &str| {
                    match s {
                    "root" => Ok(0),
                    s => s.parse::<u64>().map_err(|_| {
                        err(format!("--chown={value}: the native backend takes numeric ids (it does not read the image's /etc/passwd)"))
                    }),
                }
                };
                uid = id(u)?;
                gid = id(g)?;
            }
            "--chmod" => {
                chmod =
                    Some(u32::from_str_radix(&value, 8).map_err(|_| err(format!("--chmod={value}: expected octal")))?);
            }
            "--link" => {}
            "--from" => {
                return Err(err(
                    "COPY --from (multi-stage) is not supported by the native backend; use buildah or buildx".into(),
                ));
            }
            other => return Err(err(format!("{} flag {other} is not supported by the native backend", ins.keyword))),
        }
    }
    if args.len() < 2 {
        return Err(err(format!("{} needs at least one source and a destination", ins.keyword)));
    }
    let args: Vec<String> =
        args.iter().map(|a| dockerfile::expand(a, &st.vars)).collect::<Result<_, _>>().map_err(err)?;
    let (dest_raw, sources) = args.split_last().expect("two or more");
    let dest = context::image_path(&st.workdir, dest_raw);
    let dest_is_dir = dest_raw.ends_with('/') || sources.len() > 1 || dest.is_empty();
    let file_mode = |executable: bool| chmod.unwrap_or(if executable { 0o755 } else { 0o644 });
    let dir_mode = chmod.unwrap_or(0o755);
    let mut out = Vec::new();
    // The destination's parent directories, as docker creates them.
    let mut parent = String::new();
    for seg in dest.split('/').filter(|s| !s.is_empty()) {
        parent = if parent.is_empty() { seg.to_string() } else { format!("{parent}/{seg}") };
        if parent != dest || dest_is_dir {
            out.push(LayerEntry { path: parent.clone(), kind: LayerKind::Dir, mode: 0o755, uid: 0, gid: 0 });
        }
    }
    let join = |base: &str, rest: &str| {
        if base.is_empty() {
            rest.to_string()
        } else if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}/{rest}")
        }
    };
    for src in sources {
        if ins.keyword == "ADD" && (src.contains("://") || src.starts_with("git@")) {
            return Err(err(format!(
                "ADD {src}: the native backend adds local files only; download it in CI first, or use buildah/buildx"
            )));
        }
        if ins.keyword == "ADD"
            && [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".txz"].iter().any(|s| src.ends_with(s))
        {
            return Err(err(format!(
                "ADD {src}: extracting archives is not supported by the native backend; use COPY to copy it as a file, or buildah/buildx"
            )));
        }
        let src_clean = context::clean(src);
        if context::escapes(src) {
            return Err(ctx_err(format!("{src} is outside the build context")));
        }
        let glob = globset::GlobBuilder::new(if src_clean.is_empty() { "**" } else { &src_clean })
            .literal_separator(true)
            .build()
            .map_err(|e| err(format!("source `{src}`: {e}")))?
            .compile_matcher();
        let is_pattern = src.contains(['*', '?', '[']);
        let roots: Vec<&context::Entry> = if src_clean.is_empty() {
            Vec::new()
        } else {
            context_entries
                .iter()
                .filter(|e| if is_pattern { glob.is_match(&e.rel) } else { e.rel == src_clean })
                .collect()
        };
        if roots.is_empty() && !src_clean.is_empty() {
            return Err(ctx_err(format!(
                "{} source `{src}` is not in the build context {} (missing, or excluded by .dockerignore)",
                ins.keyword,
                req.context_dir.display()
            )));
        }
        if is_pattern && roots.len() > 1 && !dest_is_dir {
            return Err(err(format!("`{src}` matches several files: the destination must end with `/`")));
        }
        // `.` (the whole context) copies its contents.
        let whole = src_clean.is_empty();
        let dir_roots: Vec<&str> = if whole {
            vec![""]
        } else {
            roots.iter().filter(|e| e.kind == context::Kind::Dir).map(|e| e.rel.as_str()).collect()
        };
        for root in dir_roots {
            let prefix = if root.is_empty() { String::new() } else { format!("{root}/") };
            for e in context_entries.iter().filter(|e| e.rel.starts_with(&prefix)) {
                let rel = &e.rel[prefix.len()..];
                out.push(entry(e, join(&dest, rel), uid, gid, dir_mode, &file_mode));
            }
        }
        for e in roots.iter().filter(|e| e.kind != context::Kind::Dir) {
            let name = e.rel.rsplit('/').next().expect("a name");
            let path = if dest_is_dir { join(&dest, name) } else { dest.clone() };
            out.push(entry(e, path, uid, gid, dir_mode, &file_mode));
        }
    }
    Ok(out)
}

fn entry(
    e: &context::Entry,
    path: String,
    uid: u64,
    gid: u64,
    dir_mode: u32,
    file_mode: &dyn Fn(bool) -> u32,
) -> LayerEntry {
    let (kind, mode) = match &e.kind {
        context::Kind::Dir => (LayerKind::Dir, dir_mode),
        context::Kind::File { executable, .. } => (LayerKind::File(e.path.clone()), file_mode(*executable)),
        context::Kind::Symlink(t) => (LayerKind::Symlink(t.clone()), 0o777),
    };
    LayerEntry { path, kind, mode, uid, gid }
}

/// prpod's own daemonless builder (no `RUN`), as a [`Backend`](crate::phases::build::Backend).
pub struct Native;

#[async_trait::async_trait]
impl crate::phases::build::Backend for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn describe(&self) -> &'static str {
        "prpod's in-process builder"
    }

    fn in_pod(&self) -> crate::phases::build::InPod {
        // in-process: no mounts, no namespaces, no root; it writes only under its work dir
        crate::phases::build::InPod::Restricted
    }

    fn auto_note(&self) -> String {
        "the Dockerfile needs no RUN: built in-process".into()
    }

    fn install_hint(&self) -> &'static str {
        "nothing (it is part of prpod)"
    }

    async fn unavailable(&self, dockerfile: &Path) -> anyhow::Result<Option<String>> {
        match check_dockerfile(dockerfile) {
            Ok(_) => Ok(None),
            Err(e @ NativeBuildError::Dockerfile { .. }) => Ok(Some(e.to_string())),
            Err(e) => Err(PhaseError::new(Phase::Build, e).into()),
        }
    }

    async fn build(&self, job: &crate::phases::build::BackendJob<'_>) -> anyhow::Result<crate::model::BuiltImage> {
        let out_dir = job.work.join("image");
        let req = NativeBuildRequest {
            context_dir: job.context_dir.to_path_buf(),
            // Relative, so errors name the Dockerfile as the user wrote it.
            dockerfile: job.dockerfile_rel.to_path_buf(),
            build_args: job.args.clone(),
            labels: job.labels.clone(),
            platform: Some(job.platform.clone()),
            out_dir: out_dir.clone(),
            source_date_epoch: None,
        };
        let out = build(&req, &job.registry.client, &|e| tracing::debug!(target: "prpod::build", ?e))
            .await
            .at(Phase::Build)?;
        Ok(crate::model::BuiltImage {
            backend: "native".into(),
            repository: job.image.clone(),
            layout: Some(out_dir),
            digest: out.image.digest().to_string(),
            steps: None,
            work_dir: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
