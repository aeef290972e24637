//! Rules on a release after deploy.

use crate::prpod::plugin::types::Severity;
use crate::{Finding, ReleaseStatus};

/// Container waiting reasons that mean the rollout will not finish by itself.
pub const FATAL_WAITING_REASONS: &[&str] = &["CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull"];

/// Runs every release rule.
pub fn check(status: &ReleaseStatus) -> Vec<Finding> {
    let ns = &status.release.namespace;
    let mut out = Vec::new();
    for w in &status.workloads {
        let object = format!("{}/{}", w.kind, w.name);
        if w.available != w.desired {
            let conditions: Vec<String> = w
                .conditions
                .iter()
                .filter(|c| c.status != "True")
                .map(|c| {
                    let mut s = format!("{}={}", c.type_, c.status);
                    if let Some(r) = &c.reason {
                        s.push_str(&format!(" ({r})"));
                    }
                    if let Some(m) = &c.message {
                        s.push_str(&format!(": {m}"));
                    }
                    s
                })
                .collect();
            let mut message =
                format!("{object} has {} of {} desired replicas available ({} ready)", w.available, w.desired, w.ready);
            if !conditions.is_empty() {
                message.push_str(&format!("; conditions: {}", conditions.join("; ")));
            }
            message.push_str(&format!(
                "; look at its pods' events and logs (`kubectl -n {ns} describe {}`, \
                 `kubectl -n {ns} logs`) and fix what keeps them from becoming available",
                object.to_ascii_lowercase()
            ));
            out.push(Finding {
                severity: Severity::Error,
                rule: "rollout-available".into(),
                message,
                object: Some(object.clone()),
            });
        }
        for pod in &w.pods {
            for c in &pod.containers {
                let Some(reason) = c.waiting_reason.as_deref() else {
                    continue;
                };
                if !FATAL_WAITING_REASONS.contains(&reason) {
                    continue;
                }
                let hint = if reason == "CrashLoopBackOff" {
                    format!(
                        "read its logs with `kubectl -n {ns} logs {} -c {} --previous` and fix the crash",
                        pod.name, c.name
                    )
                } else {
                    "check that the image reference is right, that the image was pushed and that the \
                     cluster can pull from the registry"
                        .to_string()
                };
                let detail = c
                    .waiting_message
                    .as_deref()
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                out.push(Finding {
                    severity: Severity::Error,
                    rule: "container-waiting".into(),
                    message: format!(
                        "Pod/{} (of {object}): container {:?} is waiting with reason {reason}{detail} \
                         (restarted {} times); {hint}",
                        pod.name, c.name, c.restart_count
                    ),
                    object: Some(format!("Pod/{}", pod.name)),
                });
            }
        }
    }
    for e in &status.warnings {
        out.push(Finding {
            severity: Severity::Warning,
            rule: "warning-event".into(),
            message: format!("{}: {}: {} (seen {} times)", e.object, e.reason, e.message, e.count),
            object: Some(e.object.clone()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prpod::plugin::types::{
        Condition, ContainerStatus, PodStatus, ReleaseTarget, WarningEvent, WorkloadStatus,
    };

    fn status(available: u32, waiting: Option<&str>) -> ReleaseStatus {
        ReleaseStatus {
            release: ReleaseTarget { name: "pr-42".into(), namespace: "pr-42".into() },
            workloads: vec![WorkloadStatus {
                kind: "Deployment".into(),
                name: "web".into(),
                desired: 2,
                ready: available,
                available,
                conditions: vec![
                    Condition {
                        type_: "Available".into(),
                        status: "False".into(),
                        reason: Some("MinimumReplicasUnavailable".into()),
                        message: None,
                    },
                    Condition { type_: "Progressing".into(), status: "True".into(), reason: None, message: None },
                ],
                pods: vec![PodStatus {
                    name: "web-abc".into(),
                    phase: "Running".into(),
                    containers: vec![ContainerStatus {
                        name: "web".into(),
                        ready: false,
                        restart_count: 4,
                        waiting_reason: waiting.map(Into::into),
                        waiting_message: Some("back-off 40s restarting failed container".into()),
                    }],
                }],
            }],
            warnings: vec![],
        }
    }

    #[test]
    fn healthy_release_has_no_findings() {
        assert!(check(&status(2, None)).is_empty());
        // Starting containers are not failures.
        assert!(check(&status(2, Some("ContainerCreating"))).is_empty());
    }

    #[test]
    fn unavailable_names_numbers() {
        let f = check(&status(1, None));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, "rollout-available");
        assert_eq!(f[0].severity, Severity::Error);
        assert_eq!(f[0].object.as_deref(), Some("Deployment/web"));
        assert!(f[0].message.contains("1 of 2 desired replicas available"), "{}", f[0].message);
        assert!(f[0].message.contains("MinimumReplicasUnavailable"), "{}", f[0].message);
    }

    #[test]
    fn fatal_waiting_reasons() {
        for reason in FATAL_WAITING_REASONS {
            let f = check(&status(2, Some(reason)));
            assert_eq!(f.len(), 1, "{reason}");
            assert_eq!(f[0].rule, "container-waiting");
            assert_eq!(f[0].object.as_deref(), Some("Pod/web-abc"));
            assert!(f[0].message.contains("\"web\""));
            assert!(f[0].message.contains(reason));
            assert!(f[0].message.contains("back-off 40s"));
        }
    }

    #[test]
    fn warning_events_are_warnings() {
        let mut s = status(2, None);
        s.warnings.push(WarningEvent {
            object: "Pod/web-abc".into(),
            reason: "FailedScheduling".into(),
            message: "0/1 nodes are available".into(),
            count: 3,
        });
        let f = check(&s);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Warning);
        assert_eq!(f[0].rule, "warning-event");
        assert_eq!(f[0].object.as_deref(), Some("Pod/web-abc"));
        assert!(f[0].message.contains("FailedScheduling"));
    }
}
