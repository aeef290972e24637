//! `[plugins.trust]`: plugins from OCI registries run only with a valid signature from a trusted
//! key (fail closed).
//!
//! The signature format is cosign's legacy key-based one (what `cosign sign --key k
//! --tlog-upload=false --new-bundle-format=false` writes), so cosign-signed plugins verify and
//! prpod-signed ones verify with `cosign verify --key k.pub --insecure-ignore-tlog`:
//! - a manifest under the tag `sha256-<manifest hex>.sig` in the plugin's repository;
//! - each layer `application/vnd.dev.cosign.simplesigning.v1+json` is a "simple signing"
//!   payload naming the signed manifest digest (`critical.image.docker-manifest-digest`), with
//!   its ECDSA P-256 / SHA-256 signature, DER, base64, in the layer annotation
//!   `dev.cosignproject.cosign/signature`.
//!
//! Keys are PEM public keys (`-----BEGIN PUBLIC KEY-----`, the format of `cosign.pub`).
//! Verification is offline: the signature manifest and its payloads are fetched once, cached
//! beside the plugin, and checked on every run from the cache.
//!
//! Why the `p256` crate and not `sigstore`: sigstore 0.14 verifies cosign signatures only
//! online, and its `cosign` feature pulls in Fulcio, Rekor, OIDC and a second oci-client; its
//! `crypto` module with default features off would still bring its own key-format layers for
//! one curve prpod needs. `p256` (RustCrypto, pure Rust) verifies exactly this signature, with
//! the PEM/PKCS#8 parsing cosign's key files need, and adds four small crates to the build.
//! cosign's newer bundle format (stored through the referrers API) is not read: see the README.

use std::path::{Path, PathBuf};

use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use serde::Deserialize;

use super::oci::{OciCache, OciRef, write_atomic};
use crate::clients::registry::{
    ImageName, ImageReference, OciDescriptor, OciImageManifest, RawManifest, RegistryClient, RegistryError,
    sha256_digest,
};
use crate::error::PhaseError;

/// The layer media type of a cosign simple-signing payload.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 DER signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` of a cosign container image signature.
const SIGNATURE_TYPE: &str = "cosign container image signature";

/// `[plugins.trust]` in prpod.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// PEM public key files (relative to prpod.toml). When any is given, every plugin from an
    /// OCI registry must carry a valid signature from one of them.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
}

/// A plugin's signature could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A key file is unreadable or not a P-256 public key.
    #[error("failed to read trusted key {}: {why}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// No signature exists.
    #[error(
        "refusing to run plugin {reference}: [plugins.trust] requires a signature, and {repository} has no \
         {tag}; sign the plugin (`prpod plugin sign` or cosign's key-based signing) or remove it from the config"
    )]
    Unsigned {
        /// The plugin.
        reference: String,
        /// Its repository.
        repository: String,
        /// The signature tag looked for.
        tag: String,
    },
    /// Signatures exist, none valid from a trusted key.
    #[error("refusing to run plugin {reference} ({digest}): no valid signature from a key in [plugins.trust] ({why})")]
    Invalid {
        /// The plugin.
        reference: String,
        /// Its manifest digest.
        digest: String,
        /// Why each signature was rejected.
        why: String,
    },
    /// The signature cache could not be written.
    #[error("failed to cache the signature of plugin {reference}: {source}")]
    Cache {
        /// The plugin.
        reference: String,
        /// The cause.
        #[source]
        source: Box<super::oci::OciError>,
    },
}

/// The keys of `[plugins.trust]`.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl TrustedKeys {
    /// Reads each PEM public key file.
    pub fn load(paths: &[PathBuf]) -> Result<TrustedKeys, TrustError> {
        let mut keys = Vec::new();
        for path in paths {
            let bad = |why: String| TrustError::Key { path: path.clone(), why };
            let pem = crate::input::read_text_file(path, 64 << 10, "trusted key").map_err(|e| bad(format!("{e:#}")))?;
            let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
                bad(format!(
                    "it is not a PEM ECDSA P-256 public key (`-----BEGIN PUBLIC KEY-----`, as cosign.pub): {e}"
                ))
            })?;
            let name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            keys.push((name, key));
        }
        Ok(TrustedKeys { keys })
    }

    /// Whether no key is configured (then signatures are not required).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key file name of the first key that signed `payload` with `signature_b64`.
    fn verify(&self, payload: &[u8], signature_b64: &str) -> Option<&str> {
        let der = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()).ok()?;
        let sig = Signature::from_der(&der).ok()?;
        self.keys.iter().find(|(_, k)| k.verify(payload, &sig).is_ok()).map(|(n, _)| n.as_str())
    }
}

/// The simple-signing payload for `digest` in repository `name`, as cosign writes it.
pub fn payload(name: &ImageName, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": { "docker-reference": name.to_string() },
            "image": { "docker-manifest-digest": digest },
            "type": SIGNATURE_TYPE,
        },
        "optional": null,
    }))
    .expect("JSON of strings")
}

/// Reads a PKCS#8 PEM P-256 private key (`openssl genpkey -algorithm EC -pkeyopt
/// ec_paramgen_curve:P-256`). The key's bytes appear in no error.
pub fn signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = crate::input::read_text_file(path, 64 << 10, "signing key")?;
    SigningKey::from_pkcs8_pem(pem.trim()).map_err(|_| {
        anyhow::anyhow!(
            "{} is not an unencrypted PKCS#8 PEM ECDSA P-256 private key (`-----BEGIN PRIVATE KEY-----`); create one \
             with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem` (cosign's encrypted \
             key files are not read: sign with cosign itself)",
            path.display()
        )
    })
}

/// The signature artifact for `digest`: config blob, payload blob and manifest.
pub fn signature_artifact(key: &SigningKey, name: &ImageName, digest: &str) -> (Vec<u8>, Vec<u8>, RawManifest) {
    let payload = payload(name, digest);
    let sig: Signature = key.sign(&payload);
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
    let payload_digest = sha256_digest(&payload);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [payload_digest] },
    }))
    .expect("JSON of strings");
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(super::oci::MANIFEST_MEDIA_TYPE.into()),
        config: OciDescriptor {
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            digest: sha256_digest(&config),
            size: config.len() as i64,
            ..Default::default()
        },
        layers: vec![OciDescriptor {
            media_type: SIMPLE_SIGNING.into(),
            digest: payload_digest,
            size: payload.len() as i64,
            annotations: Some([(SIGNATURE_ANNOTATION.to_string(), sig_b64)].into()),
            ..Default::default()
        }],
        subject: None,
        artifact_type: None,
        annotations: None,
    };
    let bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
    let raw = RawManifest { digest: sha256_digest(&bytes), bytes, media_type: super::oci::MANIFEST_MEDIA_TYPE.into() };
    (config, payload, raw)
}

/// Checks a signature manifest: some simple-signing layer whose payload (from `payload_of`, by
/// digest, already re-hashed) names `digest` and is signed by a trusted key. Returns that key's
/// file name, or why none passed.
fn check(
    keys: &TrustedKeys,
    manifest: &[u8],
    digest: &str,
    payload_of: &dyn Fn(&str) -> Option<Vec<u8>>,
) -> Result<String, String> {
    let manifest: OciImageManifest =
        serde_json::from_slice(manifest).map_err(|e| format!("the signature manifest is not an OCI manifest: {e}"))?;
    let mut why = Vec::new();
    for layer in manifest.layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING) {
        let Some(sig) = layer.annotations.as_ref().and_then(|a| a.get(SIGNATURE_ANNOTATION)) else {
            why.push(format!("layer {} carries no signature annotation", layer.digest));
            continue;
        };
        let Some(payload) = payload_of(&layer.digest) else {
            why.push(format!("payload {} is missing", layer.digest));
            continue;
        };
        let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
        let critical = &claims["critical"];
        if critical["type"] != SIGNATURE_TYPE || critical["image"]["docker-manifest-digest"] != digest {
            why.push(format!("payload {} signs another digest or is not a cosign image signature", layer.digest));
            continue;
        }
        match keys.verify(&payload, sig) {
            Some(key) => return Ok(key.to_string()),
            None => why.push(format!("signature on {} is not from a trusted key", layer.digest)),
        }
    }
    if why.is_empty() {
        why.push("the signature manifest has no simple-signing layer".into());
    }
    Err(why.join("; "))
}

/// Verifies plugin `reference` (manifest `digest`) is signed by one of `keys`: from the cached
/// signature when it verifies (no network), else fetched with `client` and cached. Returns the
/// trusted key's file name. `client` is made with `client_for` only when needed.
pub async fn ensure_signed(
    keys: &TrustedKeys,
    cache: &OciCache,
    reference: &OciRef,
    digest: &str,
    client: &mut Option<RegistryClient>,
    client_for: &(dyn Fn(&ImageName) -> anyhow::Result<RegistryClient> + Send + Sync),
) -> anyhow::Result<String> {
    let text = reference.to_string();
    let cached_payload = |d: &str| cache.read(d, 1 << 20).ok().flatten();
    let sig_path = cache.signature_path(digest);
    if let Ok(manifest) = std::fs::read(&sig_path)
        && let Ok(key) = check(keys, &manifest, digest, &cached_payload)
    {
        return Ok(key);
    }
    if client.is_none() {
        *client = Some(client_for(&reference.name)?);
    }
    let client = client.as_ref().expect("set above");
    let tag = super::oci::signature_tag(digest);
    let sig_ref = ImageReference { name: reference.name.clone(), tag: Some(tag.clone()), digest: None };
    // Registry errors stay in the chain as themselves: their kind decides the exit code.
    let registry = |source: RegistryError| {
        anyhow::Error::new(PhaseError::outside_line(source))
            .context(format!("failed to fetch the signature of plugin {text}"))
    };
    if client.manifest_digest(&sig_ref).await.map_err(registry)?.is_none() {
        return Err(TrustError::Unsigned { reference: text, repository: reference.name.to_string(), tag }.into());
    }
    let raw = client.fetch_manifest(&sig_ref).await.map_err(registry)?;
    let manifest: OciImageManifest = serde_json::from_slice(&raw.bytes).unwrap_or_default();
    let cache_err =
        |source: super::oci::OciError| TrustError::Cache { reference: text.clone(), source: Box::new(source) };
    for layer in manifest.layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING && l.size <= 1 << 20) {
        if cached_payload(&layer.digest).is_none() {
            let bytes = client.fetch_blob(&reference.name, &layer.digest).await.map_err(registry)?;
            cache.write(&layer.digest, &bytes).map_err(cache_err)?;
        }
    }
    match check(keys, &raw.bytes, digest, &cached_payload) {
        Ok(key) => {
            write_atomic(&sig_path, &raw.bytes).map_err(cache_err)?;
            Ok(key)
        }
        Err(why) => Err(TrustError::Invalid { reference: text, digest: digest.to_string(), why }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair(dir: &Path, name: &str) -> (SigningKey, PathBuf) {
        use p256::pkcs8::EncodePublicKey;
        // A fixed scalar per name: the tests need distinct keys, not random ones.
        let mut seed = [7u8; 32];
        seed[0] = name.len() as u8;
        let sk = SigningKey::from_bytes(&seed.into()).unwrap();
        let pem = sk.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let path = dir.join(format!("{name}.pub"));
        std::fs::write(&path, pem).unwrap();
        (sk, path)
    }

    #[test]
    fn signatures_verify_only_for_trusted_keys_and_the_signed_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (org, org_pub) = keypair(dir.path(), "org");
        let (other, _) = keypair(dir.path(), "stranger");
        let keys = TrustedKeys::load(&[org_pub]).unwrap();
        let name = ImageName::new("127.0.0.1:5000", "acme/policy");
        let digest = format!("sha256:{}", "b".repeat(64));
        let (_, payload, manifest) = signature_artifact(&org, &name, &digest);
        let pd = sha256_digest(&payload);
        let lookup = |d: &str| (d == pd).then(|| payload.clone());
        assert_eq!(check(&keys, &manifest.bytes, &digest, &lookup).unwrap(), "org.pub");
        let other_digest = format!("sha256:{}", "c".repeat(64));
        assert!(check(&keys, &manifest.bytes, &other_digest, &lookup).unwrap_err().contains("another digest"));
        let (_, payload2, forged) = signature_artifact(&other, &name, &digest);
        let pd2 = sha256_digest(&payload2);
        let lookup2 = |d: &str| (d == pd2).then(|| payload2.clone());
        assert!(check(&keys, &forged.bytes, &digest, &lookup2).unwrap_err().contains("not from a trusted key"));
        let e = TrustedKeys::load(&[dir.path().join("nope.pub")]).unwrap_err().to_string();
        assert!(e.contains("nope.pub"), "{e}");
    }
}
