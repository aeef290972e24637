//! One function per command (`run`, `teardown`, `gc`, `wake`, ...): what the command does,
//! below the command line (nothing here knows clap) and above the phases.

pub mod dispatch;
pub mod doctor;
pub mod event;
pub mod gc;
pub mod github_sources;
pub mod plugin_oci;
pub mod run;
pub mod status;
pub mod teardown;
pub mod wake;
