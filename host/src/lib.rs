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
pub mod ops;
pub mod phases;
pub mod plugins;
pub mod repo_config;
pub mod report;
pub mod secret;
pub mod shutdown;
pub mod untrusted;
