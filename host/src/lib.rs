//! prpod: a running preview for every pull request.
//!
//! A run is a straight line of typed values ([`model`]); the decisions teams want to own (tags,
//! charts, checks) are WebAssembly component plugins behind the WIT package `prpod:plugin`,
//! run by [`plugins`].

pub mod cli;
pub mod clients;
pub mod config;
pub mod error;
pub mod input;
pub mod model;
// The native builder lives under the build phase (`phases::build::native`); this alias keeps
// `error.rs`'s downcast list compiling until exit codes come from `error::Classify` alone.
#[doc(hidden)]
pub use phases::build::native as native_build;
pub mod ops;
pub mod phases;
pub mod plugins;
pub mod repo_config;
pub mod report;
pub mod secret;
pub mod shutdown;
pub mod untrusted;
