//! One preview, one owner (issue 13): on the shared cluster a namespace is touched only when
//! prpod's labels say it is this repository's and this PR's. Another repository's preview under
//! the same name, a namespace prpod did not create, and the cluster's own namespaces are refused
//! before anything is written; `adopt_namespace` adopts only a namespace without a foreign release.

use prpod::clients::helm::KubeTarget;
use prpod::clients::kube::Kube;
use prpod::model::{PrContext, ReleaseTarget};
use prpod::phases::deploy::{self, DeployConfig};
use prpod::phases::preview::{self, Claimed};
use prpod_test_support::{unique_name, world};

use crate::context;
use crate::deploy::NamespaceGuard;

fn ctx(repository: &str, pr: u64) -> PrContext {
    let mut c = context(Some(pr), "feature/x");
    c.repository = repository.into();
    c.repository_url = format!("https://git.example/{repository}.git");
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn kube() -> Kube {
    Kube::connect(&KubeTarget { kubeconfig: Some(world().kubeconfig.clone()), context: None }).await.unwrap()
}

#[test]
fn another_repositorys_pr_with_the_same_name_is_refused_naming_the_owner() {
    let w = world();
    let ns = unique_name("shared-name");
    let _guard = NamespaceGuard(ns.clone());
    let release = ReleaseTarget { name: "pr-1".into(), namespace: ns.clone() };
    let config = DeployConfig::default();
    rt().block_on(async {
        let kube = kube().await;
        let hello = ctx("acme/hello-web", 1);
        let claimed = deploy::prepare_namespace(&kube, &hello, &release, None, &config).await.unwrap();
        assert_eq!(claimed, Claimed::Created);
        assert_eq!(deploy::prepare_namespace(&kube, &hello, &release, None, &config).await.unwrap(), Claimed::Ours);

        // acme/other PR #1, and acme/hello-web PR #2, under a policy that gives them the same name.
        for (other, owner) in
            [(ctx("acme/other", 1), "acme/hello-web PR #1"), (ctx("acme/hello-web", 2), "acme/hello-web PR #1")]
        {
            let e = deploy::prepare_namespace(&kube, &other, &release, None, &config).await.unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(owner) && msg.contains(&ns), "{msg}");
            assert_eq!(prpod::error::exit_code_for(&e), 2, "{msg}");
            // Read-only, as plan does it: the same answer.
            assert!(preview::check(&kube, &other, &release, false).await.unwrap().is_some());
        }
        // Nothing was relabelled.
        let labels = w.kubectl_ok(["get", "namespace", &ns, "-o", "jsonpath={.metadata.labels}"]);
        assert!(
            labels.contains(r#""prpod.dev/repository":"acme.hello-web""#) && labels.contains(r#""prpod.dev/pr":"1""#),
            "{labels}"
        );
    });
}

#[test]
fn a_namespace_prpod_did_not_create_is_refused_unless_adopted() {
    let w = world();
    let ns = unique_name("theirs");
    let _guard = NamespaceGuard(ns.clone());
    w.kubectl_ok(["create", "namespace", &ns]);
    let release = ReleaseTarget { name: "web-pr-3".into(), namespace: ns.clone() };
    let c = ctx("acme/web", 3);
    rt().block_on(async {
        let kube = kube().await;
        let e = deploy::prepare_namespace(&kube, &c, &release, None, &DeployConfig::default()).await.unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("not created by prpod") && msg.contains("adopt_namespace"), "{msg}");
        let labels = w.kubectl_ok(["get", "namespace", &ns, "-o", "jsonpath={.metadata.labels}"]);
        assert!(!labels.contains("prpod"), "refused before writing: {labels}");

        // A Helm release of that name that prpod did not make blocks the adoption.
        w.kubectl_ok([
            "-n",
            &ns,
            "create",
            "secret",
            "generic",
            "sh.helm.release.v1.web-pr-3.v1",
            "--from-literal=release=x",
        ]);
        w.kubectl_ok(["-n", &ns, "label", "secret", "sh.helm.release.v1.web-pr-3.v1", "owner=helm", "name=web-pr-3"]);
        let adopt = DeployConfig { adopt_namespace: true, ..DeployConfig::default() };
        let e = deploy::prepare_namespace(&kube, &c, &release, None, &adopt).await.unwrap_err();
        assert!(format!("{e:#}").contains("Helm release web-pr-3"), "{e:#}");
        w.kubectl_ok(["-n", &ns, "delete", "secret", "sh.helm.release.v1.web-pr-3.v1"]);

        assert_eq!(deploy::prepare_namespace(&kube, &c, &release, None, &adopt).await.unwrap(), Claimed::Adopted);
        assert_eq!(
            deploy::prepare_namespace(&kube, &c, &release, None, &DeployConfig::default()).await.unwrap(),
            Claimed::Ours
        );
    });
}

#[test]
fn the_clusters_own_namespaces_are_never_a_preview() {
    rt().block_on(async {
        let kube = kube().await;
        let adopt = DeployConfig { adopt_namespace: true, ..DeployConfig::default() };
        for ns in preview::RESERVED_NAMESPACES {
            let release = ReleaseTarget { name: "x".into(), namespace: ns.into() };
            let e = deploy::prepare_namespace(&kube, &ctx("acme/web", 1), &release, None, &adopt).await.unwrap_err();
            assert!(format!("{e:#}").contains("reserved"), "{e:#}");
        }
        let labels = world().kubectl_ok(["get", "namespace", "kube-system", "-o", "jsonpath={.metadata.labels}"]);
        assert!(!labels.contains("prpod"), "{labels}");
    });
}
