//! The one place that prints. Commands hand their results and errors here; `--output json`
//! and the human view are two renderings of the same values.

use std::io::Write;

use serde::Serialize;

/// How results are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Readable text for people (results that are documents are still printed as JSON).
    #[default]
    Human,
    /// One JSON document per result on stdout; errors as `{"error": ...}` JSON too.
    Json,
}

/// Prints results to stdout and diagnostics to stderr.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    format: Format,
}

impl Reporter {
    /// A reporter rendering in `format`.
    pub fn new(format: Format) -> Reporter {
        Reporter { format }
    }

    /// Prints a result document as pretty JSON on stdout.
    pub fn result<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
        Ok(())
    }

    /// Reports a failure: the error and its causes.
    pub fn error(&self, err: &anyhow::Error) {
        let causes: Vec<String> = err.chain().skip(1).map(|c| c.to_string()).collect();
        match self.format {
            Format::Json => {
                let doc = serde_json::json!({ "error": err.to_string(), "causes": causes });
                println!("{doc}");
            }
            Format::Human => {
                eprintln!("error: {err}");
                for c in causes {
                    eprintln!("  caused by: {c}");
                }
            }
        }
    }
}
