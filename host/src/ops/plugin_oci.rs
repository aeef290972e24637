//! Plugins from OCI registries: `prpod plugin push | pull | update | sign`, and resolving the
//! `oci://` references of a config (through prpod.lock) before a command loads its plugins.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::clients::registry::{CredentialResolver, ImageName, RegistryClient, api_host};
use crate::config::Config;
use crate::error::ResultExt;
use crate::plugins::lock::{self, Resolution, ResolveOptions};
use crate::plugins::oci::{self, ArtifactMeta, OciCache, OciRef};
use crate::plugins::trust::{self, TrustedKeys};
use crate::plugins::wit_version::ComponentFacts;
use crate::plugins::{PluginHost, PluginRef};

/// Makes registry clients for plugin repositories with the config's credential sources: the
/// explicit username/password go only to the host they are bound to (`registry.host`, else
/// `image.repository`'s host, else, with neither set, the plugin's own registry); every other
/// host gets the docker config's credentials (or none).
pub fn client_factory(config: &Config) -> impl Fn(&ImageName) -> anyhow::Result<RegistryClient> + Send + Sync + use<> {
    let reg = crate::phases::registry_config(config);
    let image_host = config
        .image
        .repository
        .as_deref()
        .and_then(|r| ImageName::parse(r).ok())
        .map(|n| n.value.api_host().to_string());
    move |name: &ImageName| {
        let host = name.api_host();
        let bound = reg.host.as_deref().map(|h| api_host(h.trim()).to_string()).or(image_host.clone());
        let credentials = if bound.as_deref().is_none_or(|b| b == host) {
            reg.credentials(host, None).outside_line()?
        } else {
            match &reg.docker_config {
                Some(p) => CredentialResolver::anonymous().with_docker_config(p),
                None => CredentialResolver::anonymous().with_default_docker_config(),
            }
        };
        Ok(RegistryClient::new(reg.options().outside_line()?, credentials).outside_line()?)
    }
}

fn trusted_keys(config: &Config) -> anyhow::Result<TrustedKeys> {
    Ok(TrustedKeys::load(&config.trust_keys())?)
}

/// Resolves every `oci://` plugin of `config` through the lock next to it (writing it unless
/// `locked`), and stores the verified components in `config.oci_plugins`. Nothing is read when
/// the config names no OCI plugin.
pub async fn resolve_config(config: &mut Config, locked: bool) -> anyhow::Result<Resolution> {
    let refs = config.oci_refs();
    if refs.is_empty() {
        return Ok(Resolution::default());
    }
    let lock_path = lock::lock_path(config.path.as_deref());
    let cache = OciCache::from_env()?;
    let keys = trusted_keys(config)?;
    let make = client_factory(config);
    let options = ResolveOptions { locked, update: None, write: true };
    let resolution = lock::resolve(&refs, &lock_path, &cache, &keys, &options, &make).await?;
    for note in &resolution.notes {
        tracing::warn!(target: "prpod::plugin", "{note}");
    }
    config.oci_plugins.extend(resolution.plugins.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(resolution)
}

/// A plugin reference from the command line, resolved when it is `oci://` (through the lock
/// when it has the reference, which is then not written; signatures checked under
/// `[plugins.trust]`).
pub async fn plugin_ref(config: &Config, text: &str) -> anyhow::Result<PluginRef> {
    let parsed = PluginRef::parse(text)?;
    let PluginRef::Oci { reference, .. } = parsed else { return Ok(parsed) };
    let lock_path = lock::lock_path(config.path.as_deref());
    let cache = OciCache::from_env()?;
    let keys = trusted_keys(config)?;
    let make = client_factory(config);
    let options = ResolveOptions::default();
    let r = lock::resolve(&[text.to_string()], &lock_path, &cache, &keys, &options, &make).await?;
    for note in &r.notes {
        tracing::warn!(target: "prpod::plugin", "{note}");
    }
    Ok(PluginRef::Oci { reference, resolved: r.plugins.get(text).cloned() })
}

/// `prpod plugin push`.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The component file.
    pub file: PathBuf,
    /// `oci://REGISTRY/REPO:TAG`.
    pub target: String,
    /// Overwrite an existing tag.
    pub force: bool,
    /// `org.opencontainers.image.title` (default: the file name).
    pub title: Option<String>,
    /// `org.opencontainers.image.source`.
    pub source: Option<String>,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The tag pushed to.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// The component's digest.
    pub layer_digest: String,
    /// `oci://REGISTRY/REPO@sha256:...`, for prpod.toml.
    pub pinned: String,
    /// `component.target` of the config.
    pub target: String,
    /// The `prpod:plugin` version the component targets.
    pub wit_version: String,
    /// Whether an existing tag was overwritten (`--force`).
    pub replaced: Option<String>,
}

/// Checks the component as `plugin check` does, then pushes it in the wasm OCI artifact layout.
pub async fn push(config: &Config, req: PushRequest) -> anyhow::Result<PushReport> {
    let reference =
        OciRef::parse(&req.target).map_err(|why| anyhow::anyhow!("invalid target `{}`: {why}", req.target))?;
    let Some(tag) = reference.tag.clone().filter(|_| reference.digest.is_none()) else {
        bail!("push to a tag: `oci://REGISTRY/REPO:TAG` (the digest is what the push prints)");
    };
    let file_ref = PluginRef::File { path: req.file.clone(), sha256: None };
    let plugin = PluginHost::new()?.load(&file_ref)?;
    let worlds = plugin.worlds();
    if worlds.is_empty() {
        bail!(
            "refusing to push {}: it implements none of the prpod:plugin worlds (`prpod plugin check` says why)",
            req.file.display()
        );
    }
    let (bytes, _) = file_ref.read()?;
    let facts = ComponentFacts::read(&bytes).map_err(|why| anyhow::anyhow!("{}: {why}", req.file.display()))?;
    let meta = ArtifactMeta {
        title: req.title.clone().unwrap_or_else(|| file_ref.display_name()),
        version: Some(tag.clone()),
        source: req.source.clone(),
        created: oci::now_rfc3339(),
    };
    let artifact = oci::build_artifact(&bytes, &facts, &worlds, &meta);
    let client = client_factory(config)(&reference.name)?;
    let existing = client.manifest_digest(&reference.image_reference()).await.outside_line()?;
    if let Some(d) = &existing
        && !req.force
    {
        bail!(
            "refusing to overwrite {} (it holds {d}): plugin versions are immutable; push a new tag, or pass --force",
            req.target
        );
    }
    let name = &reference.name;
    client.push_blob_bytes(name, &artifact.layer_digest, bytes.into()).await.outside_line()?;
    let config_digest = crate::clients::registry::sha256_digest(&artifact.config);
    client.push_blob_bytes(name, &config_digest, artifact.config.clone().into()).await.outside_line()?;
    client.put_manifest(name, &tag, &artifact.manifest).await.outside_line()?;
    Ok(PushReport {
        reference: reference.to_string(),
        digest: artifact.manifest.digest.clone(),
        layer_digest: artifact.layer_digest.clone(),
        pinned: OciRef { tag: None, ..reference.pinned(&artifact.manifest.digest) }.to_string(),
        target: artifact.target,
        wit_version: facts.version_label(),
        replaced: existing.filter(|d| *d != artifact.manifest.digest),
    })
}

/// What a pull fetched.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The reference pulled.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// The component's digest.
    pub layer_digest: String,
    /// `oci://REGISTRY/REPO@sha256:...`.
    pub pinned: String,
    /// The component's size.
    pub size: usize,
    /// The cached component file.
    pub path: PathBuf,
    /// The `prpod:plugin` version it targets.
    pub wit_version: String,
    /// The worlds it implements.
    pub worlds: Vec<crate::plugins::World>,
    /// The trusted key whose signature it carries, under `[plugins.trust]`.
    pub signed_by: Option<String>,
}

/// `prpod plugin pull`: fetches into the cache (never from it: a pull always asks the
/// registry), checks the signature under `[plugins.trust]`, and reads the component's import and
/// export names to say what it is (without compiling it). The lock is not touched.
pub async fn pull(config: &Config, text: &str) -> anyhow::Result<PullReport> {
    let reference = OciRef::parse(text).map_err(|why| anyhow::anyhow!("invalid plugin reference `{text}`: {why}"))?;
    let cache = OciCache::from_env()?;
    let client = client_factory(config)(&reference.name)?;
    let fetched = oci::fetch(&client, &cache, &reference, reference.digest.as_deref(), None).await?;
    let keys = trusted_keys(config)?;
    let signed_by = if keys.is_empty() {
        None
    } else {
        let mut c = Some(client.clone());
        let make = client_factory(config);
        Some(trust::ensure_signed(&keys, &cache, &reference, &fetched.manifest_digest, &mut c, &make).await?)
    };
    // What the component is, from its import and export names: compiling it here (as loading
    // does) made a cold first pull of a 20 MB component take seconds of Cranelift for a report
    // line. Running it (or `plugin check`) still compiles and type-checks every world.
    let facts = ComponentFacts::read(&fetched.bytes).map_err(|why| anyhow::anyhow!("plugin {text}: {why}"))?;
    facts.check_supported().map_err(|why| anyhow::anyhow!("plugin {text}: {why}"))?;
    Ok(PullReport {
        reference: reference.to_string(),
        pinned: OciRef { tag: None, ..reference.pinned(&fetched.manifest_digest) }.to_string(),
        digest: fetched.manifest_digest.clone(),
        layer_digest: fetched.layer_digest.clone(),
        size: fetched.bytes.len(),
        path: cache.blob_path(&fetched.layer_digest).unwrap_or_default(),
        wit_version: facts.version_label(),
        worlds: facts.worlds_by_name(),
        signed_by,
    })
}

/// `prpod plugin update [REF...]`: re-resolves the config's OCI plugins (all, or those named)
/// and writes the lock.
pub async fn update(config: &Config, refs: &[String]) -> anyhow::Result<Vec<lock::LockEntry>> {
    let configured = config.oci_refs();
    for r in refs {
        if !configured.contains(r) {
            bail!(
                "`{r}` is not an OCI plugin of {}; the config names: {}",
                config.path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "the config".into()),
                if configured.is_empty() { "none".to_string() } else { configured.join(", ") }
            );
        }
    }
    let lock_path = lock::lock_path(config.path.as_deref());
    let cache = OciCache::from_env()?;
    let keys = trusted_keys(config)?;
    let make = client_factory(config);
    let options = ResolveOptions { locked: false, update: Some(refs.to_vec()), write: true };
    let r = lock::resolve(&configured, &lock_path, &cache, &keys, &options, &make).await?;
    for note in &r.notes {
        tracing::warn!(target: "prpod::plugin", "{note}");
    }
    Ok(r.entries)
}

/// What `plugin sign` did.
#[derive(Debug, Clone, Serialize)]
pub struct SignReport {
    /// The plugin, pinned.
    pub reference: String,
    /// The signature's tag.
    pub signature_tag: String,
    /// The signature manifest's digest.
    pub signature_digest: String,
}

/// `prpod plugin sign REF --key KEY`: signs the manifest REF resolves to, cosign's legacy way.
/// An existing signature under the tag is replaced.
pub async fn sign(config: &Config, text: &str, key: &std::path::Path) -> anyhow::Result<SignReport> {
    let reference = OciRef::parse(text).map_err(|why| anyhow::anyhow!("invalid plugin reference `{text}`: {why}"))?;
    let key = trust::signing_key(key)?;
    let client = client_factory(config)(&reference.name)?;
    let digest = match &reference.digest {
        Some(d) => d.clone(),
        None => client
            .manifest_digest(&reference.image_reference())
            .await
            .outside_line()?
            .with_context(|| format!("{text} does not exist; push it first"))?,
    };
    let (config_blob, payload, manifest) = trust::signature_artifact(&key, &reference.name, &digest);
    let name = &reference.name;
    let digest_of = crate::clients::registry::sha256_digest;
    client.push_blob_bytes(name, &digest_of(&payload), payload.into()).await.outside_line()?;
    client.push_blob_bytes(name, &digest_of(&config_blob), config_blob.into()).await.outside_line()?;
    let tag = oci::signature_tag(&digest);
    client.put_manifest(name, &tag, &manifest).await.outside_line()?;
    Ok(SignReport {
        reference: OciRef { tag: None, ..reference.pinned(&digest) }.to_string(),
        signature_tag: tag,
        signature_digest: manifest.digest,
    })
}
