//! SIGINT and SIGTERM (a cancelled CI job, Ctrl-C): a run stops in a known state.
//!
//! [`listen`] installs the handlers (tokio's, so no `unsafe`); from then on a signal is recorded
//! here instead of killing the process. [`interruptible`] runs a command's future and, on a
//! signal, drops it: every guard in it runs (the deploy lock's release, temporary credential
//! files, children started with `kill_on_drop`) and the command ends with [`Interrupted`]
//! (exit 130 for SIGINT, 143 for SIGTERM). While a Helm operation that changes a release runs,
//! the code driving it holds a [`Deferred`] guard: the future is not dropped then (that would
//! kill Helm mid-write); that code sees the signal itself ([`wait`]), asks Helm to stop and gives
//! its rollback its time, and returns [`Interrupted`] naming the state the release was left in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

/// A signal that stops a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C; GitHub Actions sends it first when a job is cancelled).
    Int,
    /// SIGTERM (a CI runner or Kubernetes stopping the job).
    Term,
}

impl Signal {
    /// The signal's number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Int => 2,
            Signal::Term => 15,
        }
    }

    /// The exit code of a run it stopped: 128 + its number, as a shell reports a process it
    /// killed (130, 143).
    pub fn exit_code(self) -> u8 {
        128 + self.number() as u8
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        })
    }
}

/// A run stopped by a signal, and the state it left the preview in.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {signal}: {state}")]
pub struct Interrupted {
    /// The signal.
    pub signal: Signal,
    /// What was stopped and the state the release was left in.
    pub state: String,
}

fn channel() -> &'static watch::Sender<Option<Signal>> {
    static CH: OnceLock<watch::Sender<Option<Signal>>> = OnceLock::new();
    CH.get_or_init(|| watch::channel(None).0)
}

static DEFERRED: AtomicUsize = AtomicUsize::new(0);

/// What a run last recorded about its release, for the message of an interruption that drops
/// the run's future (it cannot ask the cluster any more).
fn release_note() -> &'static Mutex<Option<String>> {
    static NOTE: OnceLock<Mutex<Option<String>>> = OnceLock::new();
    NOTE.get_or_init(Mutex::default)
}

/// Installs the SIGINT and SIGTERM handlers (once per process; needs a tokio runtime). Until
/// then the signals keep their default action: the process dies at once.
pub fn listen() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let _ = INSTALLED.set(());
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                _ = int.recv() => Signal::Int,
                _ = term.recv() => Signal::Term,
            };
            // The first signal decides the exit code; a second one changes nothing (the run is
            // already stopping, and a CI runner that means it sends SIGKILL).
            channel().send_if_modified(|cur| {
                if cur.is_none() {
                    *cur = Some(s);
                    true
                } else {
                    false
                }
            });
        }
    });
    Ok(())
}

/// The signal received, if any.
pub fn received() -> Option<Signal> {
    *channel().borrow()
}

/// Waits for a signal (forever when none comes).
pub async fn wait() -> Signal {
    let mut rx = channel().subscribe();
    loop {
        if let Some(s) = *rx.borrow_and_update() {
            return s;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// While held, a signal does not drop the running command (see the module docs).
#[derive(Debug)]
pub struct Deferred(());

/// Defers the drop of the running command on a signal until the guard is dropped.
pub fn defer() -> Deferred {
    DEFERRED.fetch_add(1, Ordering::SeqCst);
    Deferred(())
}

impl Drop for Deferred {
    fn drop(&mut self) {
        DEFERRED.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Records what the run has done to its release so far (said when a signal stops it).
pub fn note_release(state: impl Into<String>) {
    *release_note().lock().unwrap_or_else(|e| e.into_inner()) = Some(state.into());
}

/// Runs `fut`; on a signal, drops it (once no [`Deferred`] guard is held) and returns
/// [`Interrupted`]. An error `fut` returns itself (e.g. an [`Interrupted`] from the deploy)
/// is returned as it is.
pub async fn interruptible<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut fut = std::pin::pin!(fut);
    let signal = tokio::select! {
        r = &mut fut => return r,
        s = wait() => s,
    };
    // Helm is changing the release: the code driving it stops it and returns.
    while DEFERRED.load(Ordering::SeqCst) > 0 {
        tokio::select! {
            r = &mut fut => return r,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let note = release_note().lock().unwrap_or_else(|e| e.into_inner()).take();
    Err(Interrupted { signal, state: note.unwrap_or_else(|| "no release was changed".into()) }.into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    fn raise(s: Option<Signal>) {
        channel().send_replace(s);
    }

    /// A signal drops the command's future (its guards run: a temp dir is removed) and names the
    /// state noted; code holding a `Deferred` guard finishes its part first.
    #[tokio::test]
    async fn a_signal_drops_the_run_after_its_deferred_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let run = async move {
            let _dir = dir;
            std::future::pending::<anyhow::Result<()>>().await
        };
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            raise(Some(Signal::Term));
        });
        note_release("release pr-1 in namespace x was not changed");
        let err = interruptible(run).await.unwrap_err();
        assert!(!path.exists(), "the run's temp dir is removed when it is dropped");
        assert_eq!(crate::error::exit_code_for(&err), 143);
        assert_eq!(err.to_string(), "interrupted by SIGTERM: release pr-1 in namespace x was not changed");

        // While Helm runs (a `Deferred` guard), the run is not dropped: it finishes that part.
        raise(None);
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let run = async move {
            let guard = defer();
            raise(Some(Signal::Int));
            tokio::time::sleep(Duration::from_millis(200)).await;
            done.store(true, Ordering::SeqCst);
            drop(guard);
            std::future::pending::<anyhow::Result<()>>().await
        };
        let err = interruptible(run).await.unwrap_err();
        assert!(finished.load(Ordering::SeqCst), "the deferred part ran to its end");
        assert_eq!(crate::error::exit_code_for(&err), 130);
        raise(None);
    }
}
