//! Pushes an OCI image layout with prpod's registry client: the bench harness for
//! `bench/push.sh` (compared with `skopeo copy oci:... docker://...`).
//!
//! usage: push_layout LAYOUT REGISTRY/REPOSITORY TAG
//! Credentials: PRPOD_REGISTRY_USER + PRPOD_REGISTRY_PASSWORD for the target registry; CA:
//! PRPOD_REGISTRY_CA; plain-HTTP hosts: PRPOD_REGISTRY_PLAIN_HTTP. Prints one JSON line.

use prpod::clients::registry::{ImageName, OciImage, RegistryClient};
use prpod::phases::registry::RegistryConfig;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [layout, repo, tag] = args.as_slice() else {
        anyhow::bail!("usage: push_layout LAYOUT REGISTRY/REPOSITORY TAG");
    };
    let mut config = RegistryConfig::default();
    config.apply_vars(|k| std::env::var(k).ok());
    let name = ImageName::parse(repo)?.value;
    let creds = config.credentials(name.api_host(), None)?;
    let client = RegistryClient::new(config.options()?, creds)?;
    let image = OciImage::open(layout)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = std::time::Instant::now();
    let pushed = rt.block_on(client.push(&image, &name, std::slice::from_ref(tag), &|_| {}))?;
    println!(
        "{}",
        serde_json::json!({"digest": pushed.digest, "layers": pushed.layers, "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}
