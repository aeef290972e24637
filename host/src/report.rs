//! The one place that prints. Phases emit [`Event`]s (started, note, progress, finished,
//! finding) through a [`PhaseHandle`]; commands hand their results ([`RunReport`], or any
//! serializable document) and errors here. `--output json` and the human view are two renderings
//! of the same events: stderr carries progress (one line per phase with its duration, a progress
//! bar for transfers when stderr is a terminal), stdout carries the result.
//!
//! ```text
//! ✓ context    0.00s  PR #7 acme/web feature/login @ 0123456789ab
//! ✓ tags       0.02s  pr-7 (+2 more)
//! ✓ source     0.31s  0123456789ab checked out (fetched 3 objects)
//! ```

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

pub use crate::model::LayerStats;
use crate::model::{Phase, PrContext, ReleaseTarget, ReportedFinding, Severity, TagSet};

/// How results are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Readable text for people (results that are documents are still printed as JSON).
    #[default]
    Human,
    /// One JSON document per result on stdout; errors as `{"error": ...}` JSON too.
    Json,
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseStatus {
    /// It ran and produced its value.
    Ok,
    /// It failed; the error is reported separately.
    Failed,
    /// It had nothing to do (e.g. buildx pushed the image itself).
    Skipped,
}

/// One phase as the JSON report lists it: `{name, status, duration_ms}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseRecord {
    /// The phase.
    pub name: Phase,
    /// How it ended.
    pub status: PhaseStatus,
    /// Wall-clock time it took.
    pub duration_ms: u64,
}

/// Something a phase tells the reporter.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The phase began.
    Started(Phase),
    /// One line worth telling a person (which backend was picked and why, a normalised name).
    Note(Phase, String),
    /// A transfer moved on: `done` of `total` bytes (total unknown: `None`).
    Progress {
        /// The phase transferring.
        phase: Phase,
        /// Bytes done so far.
        done: u64,
        /// Bytes in all, when known.
        total: Option<u64>,
    },
    /// The phase ended.
    Finished {
        /// The phase.
        phase: Phase,
        /// How.
        status: PhaseStatus,
        /// How long it took.
        duration: Duration,
        /// A one-line summary for people (empty: none).
        summary: String,
    },
    /// A verifier finding.
    Finding(Phase, ReportedFinding),
    /// The phase is waiting on something outside prpod (a rollout): a spinner on a terminal.
    Waiting(Phase, String),
}

/// The image a run produced, as the JSON report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    /// Repository, registry host included (normalised: lowercase).
    pub repository: String,
    /// Manifest digest the registry stores the image under.
    pub digest: String,
}

/// The result document of `prpod build` (and, with more fields filled, `run` / `deploy` /
/// `plan`). Fields that a command does not reach are left out of the JSON rather than `null`,
/// except the ones `build` always prints. The README's "JSON report" section is its schema.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// The PR context the run was for.
    pub context: Option<PrContext>,
    /// The tag-policy's tags.
    pub tags: Option<TagSet>,
    /// The pushed image.
    pub image: Option<ImageSummary>,
    /// The build backend that ran (`native`, `buildah`, `buildx`).
    pub backend: Option<String>,
    /// What the push moved.
    pub layers: Option<LayerStats>,
    /// Every phase that started, in order.
    pub phases: Vec<PhaseRecord>,
    /// The Helm release (deploying commands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseTarget>,
    /// Verifier findings, each naming its plugin (deploying and planning commands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub findings: Option<Vec<ReportedFinding>>,
    /// Where the preview answers, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_url: Option<String>,
    /// The image reference the chart deploys (`repository:tag@digest`; no digest in a plan made
    /// before the build).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy_image: Option<String>,
    /// The Helm revision now current (deploying commands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// The chart: `name-version`, and where it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<String>,
    /// What a plan would do, step by step (`prpod plan`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Vec<String>>,
    /// The rendered manifests (`--show-manifests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifests: Option<String>,
    /// Why the command failed: the error and its causes, and the exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
}

/// A failure as the JSON report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorReport {
    /// The error.
    pub error: String,
    /// Its causes, outermost first.
    pub causes: Vec<String>,
    /// The exit code prpod ends with.
    pub exit_code: u8,
}

impl ErrorReport {
    /// The report of `err`.
    pub fn of(err: &anyhow::Error) -> ErrorReport {
        ErrorReport {
            error: err.to_string(),
            causes: err.chain().skip(1).map(|c| c.to_string()).collect(),
            exit_code: crate::error::exit_code_for(err),
        }
    }
}

/// Prints results to stdout and progress and diagnostics to stderr. Cheap to clone: clones share
/// the phases recorded so far.
#[derive(Debug, Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    format: Format,
    /// Draw progress bars and colours: stderr is a terminal.
    tty: bool,
    /// Print phase lines to stderr (off for tests that capture events).
    print: bool,
    state: Mutex<State>,
    /// The run's secrets: scrubbed from everything printed.
    redactor: Mutex<crate::secret::Redactor>,
}

#[derive(Debug, Default)]
struct State {
    phases: Vec<PhaseRecord>,
    findings: Vec<ReportedFinding>,
    bar: Option<(Phase, ProgressBar)>,
    /// Every event, when capturing (tests).
    captured: Option<Vec<Event>>,
}

impl Reporter {
    /// A reporter rendering in `format`, drawing progress bars only when stderr is a terminal.
    pub fn new(format: Format) -> Reporter {
        Reporter::build(format, std::io::stderr().is_terminal(), true, None)
    }

    /// A reporter that prints nothing and records every event, for tests of phases.
    pub fn capture() -> Reporter {
        Reporter::build(Format::Json, false, false, Some(Vec::new()))
    }

    fn build(format: Format, tty: bool, print: bool, captured: Option<Vec<Event>>) -> Reporter {
        let state = Mutex::new(State { captured, ..State::default() });
        Reporter { inner: Arc::new(Inner { format, tty, print, state, redactor: Mutex::default() }) }
    }

    /// Registers a secret of this run: from now on every line, document and error this reporter
    /// prints has it (and its base64 forms) replaced by `<redacted>`. Text from Helm, buildah,
    /// git, the cluster or a chart may echo a credential back; this is the last line of defence.
    pub fn redact(&self, secret: &crate::secret::Secret) {
        self.inner.redactor.lock().unwrap_or_else(|p| p.into_inner()).add(secret);
    }

    /// `text` with every registered secret scrubbed.
    pub fn scrub(&self, text: &str) -> String {
        let r = self.inner.redactor.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_empty() { text.to_string() } else { r.scrub(text) }
    }

    /// Every string in `value` scrubbed.
    fn scrub_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => {
                let clean = self.scrub(s);
                if clean != *s {
                    *s = clean;
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| self.scrub_json(v)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|v| self.scrub_json(v)),
            _ => {}
        }
    }

    /// The output format.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while printing must not hide every later line: the state is plain data.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `phase`: emits [`Event::Started`] and returns the handle the phase reports through.
    /// Dropping the handle without [`PhaseHandle::finish`] or [`PhaseHandle::skip`] records the
    /// phase as failed (the `?` that left it carries the error to [`Reporter::error`]).
    pub fn phase(&self, phase: Phase) -> PhaseHandle {
        self.emit(Event::Started(phase));
        PhaseHandle { reporter: self.clone(), phase, start: Instant::now(), done: false }
    }

    /// Every phase that finished (or failed) so far, in order.
    pub fn phases(&self) -> Vec<PhaseRecord> {
        self.state().phases.clone()
    }

    /// Every finding reported so far.
    pub fn findings(&self) -> Vec<ReportedFinding> {
        self.state().findings.clone()
    }

    /// The events recorded by a [`Reporter::capture`] reporter.
    pub fn events(&self) -> Vec<Event> {
        self.state().captured.clone().unwrap_or_default()
    }

    /// Records and renders one event. Phases normally go through [`PhaseHandle`].
    pub fn emit(&self, event: Event) {
        let mut state = self.state();
        if let Some(c) = state.captured.as_mut() {
            c.push(event.clone());
        }
        match &event {
            Event::Finished { phase, status, duration, .. } => {
                state.phases.push(PhaseRecord {
                    name: *phase,
                    status: *status,
                    duration_ms: duration.as_millis().try_into().unwrap_or(u64::MAX),
                });
                if state.bar.as_ref().is_some_and(|(p, _)| p == phase) {
                    let (_, bar) = state.bar.take().expect("checked");
                    bar.finish_and_clear();
                }
            }
            Event::Finding(_, f) => state.findings.push(f.clone()),
            Event::Progress { phase, done, total } if self.inner.tty && self.inner.print => {
                let bar = match &state.bar {
                    Some((p, bar)) if p == phase => bar.clone(),
                    _ => {
                        let bar = ProgressBar::with_draw_target(*total, ProgressDrawTarget::stderr());
                        bar.set_style(
                            ProgressStyle::with_template(
                                "  {prefix:<8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
                            )
                            .expect("valid template")
                            .progress_chars("=> "),
                        );
                        bar.set_prefix(phase.name());
                        if let Some((_, old)) = state.bar.replace((*phase, bar.clone())) {
                            old.finish_and_clear();
                        }
                        bar
                    }
                };
                if let Some(t) = total {
                    bar.set_length(*t);
                }
                bar.set_position(*done);
            }
            Event::Waiting(phase, msg) if self.inner.tty && self.inner.print => {
                // A spinner (terminal only) until the phase finishes; CI logs get no animation.
                let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                spinner.set_style(
                    ProgressStyle::with_template("  {prefix:<8} {spinner} {msg} ({elapsed})").expect("valid template"),
                );
                spinner.set_prefix(phase.name());
                spinner.set_message(msg.clone());
                spinner.enable_steady_tick(Duration::from_millis(120));
                if let Some((_, old)) = state.bar.replace((*phase, spinner)) {
                    old.finish_and_clear();
                }
            }
            _ => {}
        }
        if !self.inner.print {
            return;
        }
        let Some(line) = self.human_line(&event) else { return };
        let line = self.scrub(&line);
        match &state.bar {
            // Print above the bar instead of through it.
            Some((_, bar)) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn human_line(&self, event: &Event) -> Option<String> {
        match event {
            Event::Started(_) | Event::Progress { .. } => None,
            Event::Note(phase, msg) => Some(format!("  {:<10} {}", phase.name(), crate::untrusted::escape(msg))),
            Event::Finished { phase, status, duration, summary } => {
                let mark = match status {
                    PhaseStatus::Ok => "✓",
                    PhaseStatus::Failed => "✗",
                    PhaseStatus::Skipped => "-",
                };
                let secs = format!("{:.2}s", duration.as_secs_f64());
                // A summary may quote a tool, a server or the repository: inert, like plugin text.
                let summary = crate::untrusted::escape(summary);
                Some(format!("{mark} {:<10} {secs:>7}  {summary}", phase.name()).trim_end().to_string())
            }
            Event::Finding(phase, r) => {
                let f = &r.finding;
                let sev = match f.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                    Severity::Info => "info",
                };
                // A finding is a plugin's text: escaped, so it cannot drive the terminal.
                let esc = crate::untrusted::escape;
                let object = f.object.as_deref().map(|o| format!(" ({})", esc(o))).unwrap_or_default();
                Some(format!(
                    "  {:<10} {sev} [{}] {}{object} — {}",
                    phase.name(),
                    esc(&f.rule),
                    esc(&f.message),
                    esc(&r.plugin)
                ))
            }
            // On a terminal the spinner says it; elsewhere one line, once.
            Event::Waiting(phase, msg) if !self.inner.tty => {
                Some(format!("  {:<10} {}", phase.name(), crate::untrusted::escape(msg)))
            }
            Event::Waiting(..) => None,
        }
    }

    /// Prints a result document as pretty JSON on stdout (strings escaped so that nothing a
    /// plugin returned can drive a terminal; see [`crate::untrusted`]).
    pub fn result<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut doc = serde_json::to_value(value)?;
        self.scrub_json(&mut doc);
        let mut out = std::io::stdout().lock();
        crate::untrusted::to_json_writer(&mut out, &doc, true)?;
        writeln!(out)?;
        out.flush()?;
        Ok(())
    }

    /// Prints `prpod event`'s document: JSON, or for people the decision, what GitHub was told
    /// and the run's lines.
    pub fn event_report(&self, report: &crate::ops::event::EventReport) -> anyhow::Result<()> {
        if self.inner.format == Format::Json {
            return self.result(report);
        }
        let mut out: Vec<u8> = Vec::new();
        let action = serde_json::to_value(report.action)?;
        writeln!(
            out,
            "event    {} {}: {} ({})",
            report.event,
            report.event_action.as_deref().unwrap_or(""),
            action.as_str().unwrap_or(""),
            report.why
        )?;
        if let Some(run) = &report.run {
            self.write_run_report(&mut out, run)?;
        }
        if let Some(g) = &report.github {
            if let Some(u) = &g.comment_url {
                writeln!(out, "comment  {u}")?;
            }
            if let Some(e) = &g.environment_left_behind {
                writeln!(out, "github   environment {e} left behind (the token cannot delete environments)")?;
            }
            for w in &g.warnings {
                writeln!(out, "warning  {w}")?;
            }
            writeln!(out, "github   {} API calls", g.api_calls)?;
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(self.scrub(&String::from_utf8_lossy(&out)).as_bytes())?;
        stdout.flush()?;
        Ok(())
    }

    /// Prints the result of a walk of the line: the JSON document, or for people the image, its
    /// digest and tags.
    pub fn run_report(&self, report: &RunReport) -> anyhow::Result<()> {
        if self.inner.format == Format::Json {
            return self.result(report);
        }
        // Written to a buffer first, so the whole of it (manifests included) is scrubbed.
        let mut out: Vec<u8> = Vec::new();
        self.write_run_report(&mut out, report)?;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(self.scrub(&String::from_utf8_lossy(&out)).as_bytes())?;
        stdout.flush()?;
        Ok(())
    }

    fn write_run_report(&self, out: &mut Vec<u8>, report: &RunReport) -> anyhow::Result<()> {
        if let Some(image) = &report.image {
            writeln!(out, "image    {}@{}", image.repository, image.digest)?;
        }
        if let Some(tags) = &report.tags {
            let tags: Vec<&str> = std::iter::once(&tags.primary).chain(&tags.extra).map(String::as_str).collect();
            writeln!(out, "tags     {}", tags.join(", "))?;
        }
        if let Some(backend) = &report.backend {
            writeln!(out, "backend  {backend}")?;
        }
        if let Some(l) = &report.layers {
            writeln!(
                out,
                "layers   {} pushed, {} already there, {} mounted, {} uploaded",
                l.pushed,
                l.skipped,
                l.mounted,
                human_bytes(l.bytes_uploaded)
            )?;
        }
        if let Some(i) = &report.deploy_image {
            writeln!(out, "deploys  {i}")?;
        }
        if let Some(c) = &report.chart {
            writeln!(out, "chart    {c}")?;
        }
        if let Some(r) = &report.release {
            match report.revision {
                Some(rev) => writeln!(out, "release  {} revision {rev} in namespace {}", r.name, r.namespace)?,
                None => writeln!(out, "release  {} in namespace {}", r.name, r.namespace)?,
            }
        }
        if let Some(f) = &report.findings
            && !f.is_empty()
        {
            let count = |s: Severity| f.iter().filter(|x| x.finding.severity == s).count();
            writeln!(
                out,
                "findings {} error(s), {} warning(s), {} info",
                count(Severity::Error),
                count(Severity::Warning),
                count(Severity::Info)
            )?;
        }
        for step in report.plan.iter().flatten() {
            writeln!(out, "plan     {step}")?;
        }
        if let Some(url) = &report.preview_url {
            writeln!(out, "preview  {url}")?;
        }
        if let Some(m) = &report.manifests {
            writeln!(out, "---")?;
            write!(out, "{m}")?;
        }
        Ok(())
    }

    /// Reports a failure: the error and its causes. Messages may quote plugins, servers and
    /// child processes, so they are escaped for the terminal. Write errors (a closed pipe) are
    /// ignored: there is no one left to tell.
    pub fn error(&self, err: &anyhow::Error) {
        if let Some((_, bar)) = self.state().bar.take() {
            bar.finish_and_clear();
        }
        let causes: Vec<String> = err.chain().skip(1).map(|c| self.scrub(&c.to_string())).collect();
        let message = self.scrub(&err.to_string());
        match self.inner.format {
            Format::Json => {
                let doc = serde_json::json!({ "error": message, "causes": causes });
                let mut out = std::io::stdout().lock();
                let _ = crate::untrusted::to_json_writer(&mut out, &doc, false);
                let _ = writeln!(out);
            }
            Format::Human => {}
        }
        // People and CI logs get the human line on stderr in either format (as helm and kubectl
        // do); with `--output json`, stdout keeps the document.
        self.error_line(&message, &causes);
    }

    /// Prints only the human form of a failure on stderr: for a command whose JSON document
    /// (on stdout) already carries the error.
    pub fn error_stderr(&self, err: &anyhow::Error) {
        if let Some((_, bar)) = self.state().bar.take() {
            bar.finish_and_clear();
        }
        let causes: Vec<String> = err.chain().skip(1).map(|c| self.scrub(&c.to_string())).collect();
        self.error_line(&self.scrub(&err.to_string()), &causes);
    }

    /// A notice on stderr, in the form GitHub Actions shows as an annotation on the run
    /// (`::notice::`): something people should see though nothing failed.
    pub fn notice(&self, message: &str) {
        let mut out = std::io::stderr().lock();
        // Actions reads a workflow command up to the end of the line: one line, escaped as it
        // documents (`%`, CR, LF).
        let text = self.scrub(message).replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A");
        let _ = writeln!(out, "::notice title=prpod::{}", crate::untrusted::escape(&text));
    }

    fn error_line(&self, message: &str, causes: &[String]) {
        let mut out = std::io::stderr().lock();
        let _ = writeln!(out, "error: {}", crate::untrusted::escape(message));
        for c in causes {
            let _ = writeln!(out, "  caused by: {}", crate::untrusted::escape(c));
        }
    }
}

/// `1.5 MiB`-style sizes for people.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// A running phase: what it reports goes through here. See [`Reporter::phase`].
#[derive(Debug)]
pub struct PhaseHandle {
    reporter: Reporter,
    phase: Phase,
    start: Instant,
    done: bool,
}

impl PhaseHandle {
    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Tells a person one thing worth knowing (a choice made, a name changed).
    pub fn note(&self, message: impl Into<String>) {
        self.reporter.emit(Event::Note(self.phase, message.into()));
    }

    /// Reports a verifier finding.
    pub fn finding(&self, finding: ReportedFinding) {
        self.reporter.emit(Event::Finding(self.phase, finding));
    }

    /// Says the phase is waiting on something outside prpod (a spinner on a terminal).
    pub fn waiting(&self, message: impl Into<String>) {
        self.reporter.emit(Event::Waiting(self.phase, message.into()));
    }

    /// A handle for reporting transfer progress from other tasks.
    pub fn transfer(&self) -> Transfer {
        Transfer { reporter: self.reporter.clone(), phase: self.phase, state: Arc::default() }
    }

    /// Ends the phase successfully with a one-line summary.
    pub fn finish(mut self, summary: impl Into<String>) {
        self.end(PhaseStatus::Ok, summary.into());
    }

    /// Ends the phase as skipped, saying why.
    pub fn skip(mut self, reason: impl Into<String>) {
        self.end(PhaseStatus::Skipped, reason.into());
    }

    fn end(&mut self, status: PhaseStatus, summary: String) {
        self.done = true;
        let duration = self.start.elapsed();
        self.reporter.emit(Event::Finished { phase: self.phase, status, duration, summary });
    }
}

impl Drop for PhaseHandle {
    fn drop(&mut self) {
        if !self.done {
            self.end(PhaseStatus::Failed, String::new());
        }
    }
}

/// Progress of one phase's transfers, shared by the tasks doing them (clone it into each).
#[derive(Debug, Clone)]
pub struct Transfer {
    reporter: Reporter,
    phase: Phase,
    state: Arc<Mutex<(u64, Option<u64>)>>,
}

impl Transfer {
    /// Adds `bytes` to the total to transfer.
    pub fn add_total(&self, bytes: u64) {
        let (done, total) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.1 = Some(s.1.unwrap_or(0) + bytes);
            *s
        };
        self.reporter.emit(Event::Progress { phase: self.phase, done, total });
    }

    /// Takes back `bytes` counted before (an upload attempt that will be repeated).
    pub fn retreat(&self, bytes: u64) {
        let (done, total) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.0 = s.0.saturating_sub(bytes);
            *s
        };
        self.reporter.emit(Event::Progress { phase: self.phase, done, total });
    }

    /// Records `bytes` more transferred.
    pub fn advance(&self, bytes: u64) {
        let (done, total) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.0 += bytes;
            *s
        };
        self.reporter.emit(Event::Progress { phase: self.phase, done, total });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_recorded_with_status() {
        let r = Reporter::capture();
        let p = r.phase(Phase::Source);
        p.note("fetching");
        p.finish("done");
        {
            let _failed = r.phase(Phase::Build);
        }
        r.phase(Phase::Push).skip("buildx pushed it");
        let phases = r.phases();
        let got: Vec<(Phase, PhaseStatus)> = phases.iter().map(|p| (p.name, p.status)).collect();
        assert_eq!(
            got,
            [
                (Phase::Source, PhaseStatus::Ok),
                (Phase::Build, PhaseStatus::Failed),
                (Phase::Push, PhaseStatus::Skipped)
            ]
        );
        assert!(r.events().contains(&Event::Note(Phase::Source, "fetching".into())));
        let json = serde_json::to_value(&phases[0]).unwrap();
        assert_eq!(json["name"], "source");
        assert_eq!(json["status"], "ok");
        assert!(json["duration_ms"].is_u64());
    }

    #[test]
    fn transfer_progress_accumulates() {
        let r = Reporter::capture();
        let p = r.phase(Phase::Push);
        let t = p.transfer();
        t.add_total(100);
        t.clone().advance(40);
        t.advance(60);
        assert_eq!(r.events().last(), Some(&Event::Progress { phase: Phase::Push, done: 100, total: Some(100) }));
    }

    #[test]
    fn build_report_prints_every_documented_key() {
        let v = serde_json::to_value(RunReport::default()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["context", "tags", "image", "backend", "layers", "phases"]);
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(200 * 1024 * 1024), "200.0 MiB");
    }
}

/// `prpod status`: a release as it runs now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusReport {
    /// Release and namespace.
    pub release: Option<ReleaseTarget>,
    /// Current revision.
    pub revision: Option<u32>,
    /// Helm's status of it (`deployed`, `failed`, `pending-upgrade`, ...).
    pub status: Option<String>,
    /// `name-version` of its chart.
    pub chart: Option<String>,
    /// The images its workloads run.
    pub images: Vec<String>,
    /// The digests of those images.
    pub image_digests: Vec<String>,
    /// Its workloads: kind, name, desired, ready, available.
    pub workloads: Vec<WorkloadLine>,
    /// Its pods.
    pub pods: Vec<PodLine>,
    /// Where the preview answers.
    pub preview_url: Option<String>,
    /// What `--replicas` did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scaled: Option<String>,
    /// Awake or asleep, the last update, and when gc will sleep or collect it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<crate::phases::lifecycle::LifecycleStatus>,
}

/// One workload in `prpod status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadLine {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Replicas asked for.
    pub desired: u32,
    /// Ready.
    pub ready: u32,
    /// Available.
    pub available: u32,
}

/// One pod in `prpod status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodLine {
    /// Name.
    pub name: String,
    /// Phase.
    pub phase: String,
    /// Ready containers.
    pub ready: u32,
    /// Containers.
    pub containers: u32,
    /// Restarts, all containers.
    pub restarts: u32,
    /// Seconds since it was created.
    pub age_seconds: Option<u64>,
    /// Why a container waits, if one does.
    pub waiting: Option<String>,
}

/// `prpod doctor`: one line per check.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DoctorReport {
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
    /// Whether a run would work (no check failed).
    pub ok: bool,
}

/// One check of `prpod doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked (`helm`, `registry push access`, `rbac`...).
    pub name: String,
    /// `ok`, `warn` or `fail`.
    pub status: CheckStatus,
    /// What was found (versions, the server, the missing rights).
    pub detail: String,
    /// What to do about a warning or failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// A run would fail.
    Fail,
}

fn age(secs: Option<u64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86400),
    }
}

impl Reporter {
    /// Prints `prpod status`: JSON, or a summary and a pod table for people.
    pub fn status_report(&self, r: &StatusReport) -> anyhow::Result<()> {
        if self.inner.format == Format::Json {
            return self.result(r);
        }
        let mut out = std::io::stdout().lock();
        if let Some(rel) = &r.release {
            let rev = r.revision.map(|v| format!(" revision {v}")).unwrap_or_default();
            let st = r.status.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
            writeln!(out, "release  {}{rev}{st} in namespace {}", rel.name, rel.namespace)?;
        }
        if let Some(c) = &r.chart {
            writeln!(out, "chart    {c}")?;
        }
        for i in &r.images {
            writeln!(out, "image    {i}")?;
        }
        if let Some(u) = &r.preview_url {
            writeln!(out, "preview  {u}")?;
        }
        if let Some(s) = &r.scaled {
            writeln!(out, "scaled   {s}")?;
        }
        if let Some(l) = &r.lifecycle {
            writeln!(out, "state    {}", l.summary())?;
        }
        for w in &r.workloads {
            writeln!(out, "{:<8} {} {}/{} ready, {} available", w.kind, w.name, w.ready, w.desired, w.available)?;
        }
        if !r.pods.is_empty() {
            let width = r.pods.iter().map(|p| p.name.len()).max().unwrap_or(3).max(3);
            writeln!(out, "{:<width$}  {:<9} {:<6} {:<9} AGE", "POD", "PHASE", "READY", "RESTARTS")?;
            for p in &r.pods {
                let waiting = p.waiting.as_deref().map(|w| format!("  ({w})")).unwrap_or_default();
                writeln!(
                    out,
                    "{:<width$}  {:<9} {:<6} {:<9} {}{waiting}",
                    p.name,
                    p.phase,
                    format!("{}/{}", p.ready, p.containers),
                    p.restarts,
                    age(p.age_seconds)
                )?;
            }
        }
        Ok(())
    }

    /// Prints a command's result: `value` as JSON, or `lines` for people (teardown, gc, wake).
    pub fn lines_or_json<T: Serialize>(&self, value: &T, lines: &[String]) -> anyhow::Result<()> {
        if self.inner.format == Format::Json {
            return self.result(value);
        }
        let mut out = std::io::stdout().lock();
        for l in lines {
            writeln!(out, "{}", crate::untrusted::escape(l))?;
        }
        Ok(())
    }

    /// Prints `prpod doctor`: JSON, or one line per check with its fix.
    pub fn doctor_report(&self, r: &DoctorReport) -> anyhow::Result<()> {
        if self.inner.format == Format::Json {
            return self.result(r);
        }
        let mut out = std::io::stdout().lock();
        for c in &r.checks {
            let mark = match c.status {
                CheckStatus::Ok => "✓",
                CheckStatus::Warn => "!",
                CheckStatus::Fail => "✗",
            };
            writeln!(out, "{mark} {:<24} {}", c.name, c.detail)?;
            if let Some(f) = &c.fix {
                writeln!(out, "  {:<24} fix: {f}", "")?;
            }
        }
        writeln!(out, "{}", if r.ok { "a run would work" } else { "a run would fail: fix the ✗ lines above" })?;
        Ok(())
    }
}
